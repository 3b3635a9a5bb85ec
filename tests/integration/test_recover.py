"""`recover`: rows PostgreSQL lost come back from Airtable (real cluster, emulator over HTTP, real pyairtable)."""

import asyncio
import json
import re
from datetime import UTC, datetime
from types import SimpleNamespace

import asyncpg
import pytest

from daemon.cli import EXIT_FAILURE, main
from daemon.recover import (
    Recovery,
    Selection,
    Unusable,
    conversation_row,
    differences,
    escalation_row,
    interaction_row,
)
from daemon.sinks.airtable_schema import cut_text
from daemon.sinks.base import SinkError
from daemon.sinks.postgres import quote_ident
from daemon.sinks.postgres_rows import PostgresRows
from daemon.testing.airtable.bases import formula_options
from tests.integration.conftest import BASE, NAMES, T0, TOKEN, cid, duration_and_multiple_select
from tests.support import write_config

COMPARED = {
    "conversations": "conversation_id, customer_phone, customer_name, status, started_at, last_activity, message_count",
    "interactions": "interaction_id, conversation_id, message_id, direction, content, status, customer_phone, "
    "occurred_at",
    "escalations": "escalation_id, ticket_id, conversation_id, reason, priority, status, customer_phone, "
    "created_at, notes",
}


async def dump(conn, schema):
    return {
        table: [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM {quote_ident(schema)}.{table} ORDER BY 1")]
        for table, cols in COMPARED.items()
    }


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

    report = await recover(stores.client, pg_cluster, pg_schema, Selection(everything=True))

    assert await dump(pg_conn, pg_schema) == before  # counts, spans, statuses and phones included
    t = report.tallies
    assert (t["conversations"].read, t["conversations"].inserted, t["conversations"].present) == (4, 2, 2)
    assert (t["interactions"].read, t["interactions"].inserted, t["interactions"].present) == (60, 45, 15)
    assert (t["escalations"].inserted, t["escalations"].conflicting) == (1, 0)
    assert report.problems == []

    again = await recover(stores.client, pg_cluster, pg_schema, Selection(everything=True))
    assert await dump(pg_conn, pg_schema) == before
    assert all(tally.inserted == 0 and tally.conflicting == 0 for tally in again.tallies.values())
    assert again.tallies["interactions"].present == 60


async def test_recover_one_phone_or_conversation_touches_only_it(stores, pg_cluster, pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(phone="5511900000002"))
    counts = dict(await pg_conn.fetch(f"SELECT conversation_id, count(*) FROM {s}.interactions GROUP BY 1"))
    assert counts == {cid("c2"): 15}
    assert report.tallies["conversations"].read == 1 and report.tallies["interactions"].inserted == 15
    # status and count come back as delivery computed them: closed by the unsubscribe, 15 messages
    row = await pg_conn.fetchrow(
        f"SELECT status, message_count FROM {s}.conversations WHERE conversation_id = $1", cid("c2")
    )
    assert tuple(row) == ("closed", 15)
    await recover(stores.client, pg_cluster, pg_schema, Selection(conversation=cid("c1")))
    counts = dict(await pg_conn.fetch(f"SELECT conversation_id, count(*) FROM {s}.interactions GROUP BY 1"))
    assert counts == {cid("c1"): 15, cid("c2"): 15}


async def test_a_conversation_id_with_quotes_and_backslashes_recovers_exactly_it(
    stores, pg_cluster, pg_conn, pg_schema
):
    s = quote_ident(pg_schema)
    odd = "it's \\' a \"test\" \\"
    ids = [odd, "it's ", "it", "x' != 'y", odd + "x", "\\"]
    await stores.client.upsert(
        "Conversations", "ConversationId", [{"ConversationId": c, "CustomerPhone": "5511900000077"} for c in ids]
    )
    await stores.client.upsert(
        "Interactions",
        "InteractionId",
        [
            {
                "InteractionId": f"odd-{n}",
                "ConversationId": c,
                "Direction": "inbound",
                "Timestamp": "2026-11-25T12:00:00.000Z",
            }
            for n, c in enumerate(ids)
        ],
    )
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(conversation=odd))
    assert report.tallies["conversations"].read == 1 and report.tallies["interactions"].read == 1
    assert await pg_conn.fetchval(
        f"SELECT array_agg(conversation_id) FROM {s}.conversations WHERE customer_phone = '5511900000077'"
    ) == [odd]
    assert await pg_conn.fetchval(
        f"SELECT array_agg(interaction_id) FROM {s}.interactions WHERE interaction_id LIKE 'odd-%'"
    ) == ["odd-0"]


async def test_recover_since_a_date(stores, pg_cluster, pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    since = datetime.fromtimestamp(T0 + 40 * 60, UTC).isoformat()
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(since=since))
    assert report.tallies["interactions"].inserted == 20
    assert await pg_conn.fetchval(f"SELECT min(occurred_at) FROM {s}.interactions") == datetime.fromtimestamp(
        T0 + 40 * 60, UTC
    )


async def test_postgres_wins_unless_airtable_is_preferred(stores, pg_cluster, pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"UPDATE {s}.interactions SET content = 'edited in PostgreSQL' WHERE message_id = 'wamid.7'")
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(conversation=cid("c3")))
    assert report.tallies["interactions"].conflicting == 1 and report.tallies["interactions"].replaced == 0
    assert (
        await pg_conn.fetchval(f"SELECT content FROM {s}.interactions WHERE message_id = 'wamid.7'")
        == "edited in PostgreSQL"
    )
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(conversation=cid("c3")), prefer="airtable")
    assert report.tallies["interactions"].replaced == 1
    assert await pg_conn.fetchval(f"SELECT content FROM {s}.interactions WHERE message_id = 'wamid.7'") == "hello 7"


async def test_rows_whose_conversation_is_nowhere_get_one_built(
    stores, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    await pg_conn.execute(f"DELETE FROM {s}.escalations")
    await pg_conn.execute(f"DELETE FROM {s}.conversations")

    def drop_conversation():
        table = stores_emulator.emulator.bases[BASE].table("Conversations")
        for record_id, record in list(table.records.items()):
            if table.by_name(record)["ConversationId"] == cid("c0"):
                del table.records[record_id]

    stores_emulator.run(drop_conversation)
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(everything=True))
    assert report.tallies["conversations"].built == 1
    row = await pg_conn.fetchrow(
        f"SELECT message_count, customer_phone, priority FROM {s}.conversations WHERE conversation_id = $1", cid("c0")
    )
    assert row["message_count"] == 15 and row["customer_phone"] is None
    assert row["priority"] == "MEDIUM"  # one of Airtable's choices, as every other conversation's default
    assert await pg_conn.fetchval(f"SELECT array_agg(DISTINCT priority) FROM {s}.conversations") == ["MEDIUM"]
    assert await pg_conn.fetchval(f"SELECT count(*) FROM {s}.interactions") == 60


def test_records_that_cannot_be_rows_say_why():
    with pytest.raises(Unusable, match="no ConversationId"):
        conversation_row({"CustomerPhone": "5511"}, "2026-11-27T00:00:00.000Z")
    with pytest.raises(Unusable, match="Direction"):
        interaction_row(
            {
                "InteractionId": "i",
                "ConversationId": "c",
                "Direction": "sideways",
                "Timestamp": "2026-11-27T00:00:00.000Z",
            },
            "2026-11-27T00:00:00.000Z",
        )
    with pytest.raises(Unusable, match="Timestamp is not a date"):
        interaction_row(
            {"InteractionId": "i", "ConversationId": "c", "Direction": "inbound", "Timestamp": "yesterday"},
            "2026-11-27T00:00:00.000Z",
        )
    row = conversation_row(
        {
            "ConversationId": "c",
            "CustomerPhone": "+55 (11) 98765-4321",
            "Status": "escalated",
            "LastActivity": "2026-11-20T08:00:00.000Z",
            "Tags": "vip, billing",
        },
        "now",
    )
    assert row["customer_phone"] == "5511987654321" and row["tags"] == ["vip", "billing"]
    assert row["metadata"]["status_event"] == "open_chat"
    with pytest.raises(Unusable, match="TicketId .* holds a control character"):
        escalation_row(
            {"EscalationId": "e", "TicketId": "t\x1b", "ConversationId": "c", "CreatedAt": "2026-11-27T00:00:00.000Z"},
            "now",
        )
    row = conversation_row(
        {"ConversationId": "c", "CustomerName": "A\x00na", "Metadata": '{"k\\u0000": ["\\u0000"]}'}, "now"
    )
    assert row["customer_name"] == "A\ufffdna" and row["metadata"] == {"k\ufffd": ["\ufffd"]}


def test_values_are_compared_as_chatledger_wrote_them():
    postgres = {
        "occurred_at": "2026-11-20T09:33:28.017654+00:00",
        "content": "oi",
        "processing_time_ms": 350,
        "status": "read",
        "customer_phone": "5511987654321",
        "tags": ["vip"],
        "priority": "HIGH",
    }
    assert (
        differences(
            "interactions",
            {"occurred_at": "2026-11-20T09:33:28.017Z", "content": None, "processing_time_ms": 350.0, "status": None},
            postgres,
        )
        == []
    )
    assert (
        differences("conversations", {"customer_phone": "+55 (11) 98765-4321", "tags": [], "priority": None}, postgres)
        == []
    )
    assert differences(
        "interactions", {"occurred_at": "2026-11-20T09:33:28.018Z", "content": "olá", "status": "read"}, postgres
    ) == ["content", "occurred_at"]


@pytest.mark.parametrize(
    "airtable, postgres, differs",
    [
        ("sent", "read", False),
        ("delivered", "read", False),
        ("failed", "delivered", False),
        ("read", "delivered", True),
        ("delivered", "failed", True),
        ("read", "sent", True),
    ],
)
def test_recover_never_moves_an_interactions_status_back(airtable, postgres, differs):
    assert differences("interactions", {"status": airtable}, {"status": postgres}) == (["status"] if differs else [])
    # a conversation's and an escalation's status are no delivery status: any difference is one
    assert differences("escalations", {"status": "pending"}, {"status": "resolved"}) == ["status"]


BROKEN = [  # Airtable interactions PostgreSQL cannot take as they are
    {
        "InteractionId": "nul-key",
        "ConversationId": "a\x00b",
        "Direction": "inbound",
        "Timestamp": "2026-11-27T00:00:00.000Z",
    },
    {
        "InteractionId": "nul-content",
        "ConversationId": cid("c1"),
        "Direction": "inbound",
        "Content": "x\x00y",
        "Timestamp": "2026-11-27T00:00:00.000Z",
    },
    {
        "InteractionId": "huge-time",
        "ConversationId": cid("c1"),
        "Direction": "outbound",
        "ProcessingTime": 10**12,
        "Timestamp": "2026-11-27T00:00:00.000Z",
    },
    {
        "InteractionId": "surrogates",
        "ConversationId": cid("c1"),
        "Direction": "inbound",
        "Content": "x\ud800y",
        "Response": "\udfff",
        "Timestamp": "2026-11-28T00:00:00.000Z",
    },  # JavaScript strings may hold them
]


async def test_records_postgresql_cannot_take_are_reported_and_the_rest_recovered(
    stores, pg_cluster, pg_conn, pg_schema
):
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    await stores.client.upsert(NAMES["interactions"], "InteractionId", BROKEN)

    report = await recover(stores.client, pg_cluster, pg_schema, Selection(everything=True))

    t = report.tallies["interactions"]
    assert (t.read, t.inserted, t.unusable) == (64, 62, 2)
    assert await pg_conn.fetchval(f"SELECT count(*) FROM {s}.interactions") == 62
    assert (
        await pg_conn.fetchval(f"SELECT content FROM {s}.interactions WHERE interaction_id = 'nul-content'")
        == "x\ufffdy"
    )
    assert await pg_conn.fetchrow(
        f"SELECT content, response FROM {s}.interactions WHERE interaction_id = 'surrogates'"
    ) == ("x\ufffdy", "\ufffd")
    assert [p for p in report.problems if "ConversationId" in p and "control character" in p]
    assert [p for p in report.problems if "huge-time" in p and "not recovered" in p]
    assert len(report.problems) == 2
    assert (
        await pg_conn.fetchval(f"SELECT message_count FROM {s}.conversations WHERE conversation_id = $1", cid("c1"))
        == 17
    )  # recounted: its 15 and the two cleaned ones


def test_recover_all_on_the_command_line_goes_on_past_an_unusable_record_and_exits_1(
    stores, stores_emulator, pg_cluster, pg_schema, tmp_path, capsys
):
    async def lose_interactions():
        conn = await asyncpg.connect(pg_cluster.dsn())
        try:
            await conn.execute(f"DELETE FROM {quote_ident(pg_schema)}.interactions")
        finally:
            await conn.close()

    asyncio.run(lose_interactions())
    config = write_config(
        tmp_path,
        extra=(
            f'[airtable]\napi_key = "{TOKEN}"\nbase_id = "{BASE}"\nendpoint_url = "{stores_emulator.url}"\n'
            f'[postgres]\ndsn = "{pg_cluster.dsn()}"\nschema = "{pg_schema}"\n'
        ),
    )
    asyncio.run(_upsert(stores_emulator.url, BROKEN[:1]))

    assert main(["recover", "--all", "--config", str(config)]) == EXIT_FAILURE
    out = capsys.readouterr().out
    assert "problem: Interactions record" in out and "control character" in out
    assert "      60" in out  # the 60 good interactions were recovered


async def _upsert(url, rows):
    from daemon.ratelimit import RequestBudget
    from daemon.sinks.airtable import AirtableClient

    client = AirtableClient(TOKEN, BASE, url, RequestBudget(5))
    try:
        await client.upsert(NAMES["interactions"], "InteractionId", rows)
    finally:
        client.close()


async def test_recover_reads_a_documented_base_through_the_mapped_names(renamed_stores, pg_cluster, pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    before = await dump(pg_conn, pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.interactions WHERE conversation_id = $1", cid("c3"))
    await pg_conn.execute(f"DELETE FROM {s}.escalations")

    async def run(selection, prefer="postgres"):
        async with PostgresRows.open(pg_cluster.dsn(), pg_schema) as pg:
            return await Recovery(renamed_stores.client, renamed_stores.names, pg, prefer=prefer).run(selection)

    report = await run(Selection(everything=True), prefer="airtable")
    t = report.tallies
    assert (t["interactions"].read, t["interactions"].inserted, t["interactions"].present) == (60, 15, 45)
    assert (t["escalations"].inserted, t["conversations"].present) == (1, 4)
    # dates without time hold the day only: the same day is the same time, nothing conflicts or is replaced
    assert all(tally.conflicting == 0 and tally.replaced == 0 for tally in t.values()) and report.problems == []
    after = await dump(pg_conn, pg_schema)
    day = lambda row: (*row[:4], row[4].date(), row[5].date(), row[6])  # noqa: E731 - spans come from the days
    assert [day(row) for row in after["conversations"]] == [day(row) for row in before["conversations"]]
    lost = {row[0]: row for row in before["interactions"] if row[1] == cid("c3")}
    back = {row[0]: row for row in after["interactions"] if row[1] == cid("c3")}
    assert {k: v[:7] for k, v in back.items()} == {k: v[:7] for k, v in lost.items()}  # content included
    assert {v[7].date() for v in back.values()} == {v[7].date() for v in lost.values()}

    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    report = await run(Selection(phone="5511900000002"))  # a formula on the renamed Phone field
    assert report.tallies["interactions"].inserted == 15
    since = datetime.fromtimestamp(T0 + 40 * 60, UTC).isoformat()
    report = await run(Selection(since=since))  # on the renamed When field, which holds only the day
    assert (report.tallies["interactions"].inserted, report.tallies["interactions"].present) == (45, 15)
    assert report.problems == []


async def test_recover_reads_a_duration_and_a_multiple_select_as_what_was_delivered(
    typed_stores, pg_cluster, pg_conn, pg_schema
):
    stores = await typed_stores(duration_and_multiple_select)
    assert stores.warnings == []
    s = quote_ident(pg_schema)
    times = f"SELECT processing_time_ms FROM {s}.interactions WHERE processing_time_ms IS NOT NULL ORDER BY 1"
    assert [r[0] for r in await pg_conn.fetch(times)] == [350, 1_234_567]

    report = await recover(stores.client, pg_cluster, pg_schema, Selection(everything=True), prefer="airtable")
    t = report.tallies
    assert (t["interactions"].read, t["interactions"].present) == (62, 62)  # 0.35 s is the 350 ms delivered
    assert (t["conversations"].read, t["conversations"].present) == (4, 4)  # the choices are the tags
    assert all(tally.conflicting == 0 and tally.replaced == 0 and tally.unusable == 0 for tally in t.values())
    assert report.problems == []

    await pg_conn.execute(f"DELETE FROM {s}.escalations")
    await pg_conn.execute(f"DELETE FROM {s}.interactions WHERE conversation_id = $1", cid("c1"))
    await pg_conn.execute(f"DELETE FROM {s}.conversations WHERE conversation_id = $1", cid("c1"))
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(conversation=cid("c1")))
    assert report.tallies["interactions"].inserted == 17 and report.problems == []
    assert [r[0] for r in await pg_conn.fetch(times)] == [350, 1_234_567]  # milliseconds, as the API took them
    assert json.loads(
        await pg_conn.fetchval(f"SELECT tags FROM {s}.conversations WHERE conversation_id = $1", cid("c1"))
    ) == ["vip", "late"]


def left_out_fields(base):
    """Fields chatledger cannot write: Sentiment removed, Intent a formula."""
    base.table("Conversations").remove_field("Sentiment")
    intent = base.table("Interactions").field("Intent")
    intent.type, intent.options = "formula", formula_options("'computed'")


async def test_a_field_chatledger_leaves_out_is_no_conflict_and_never_replaces_postgresql(
    typed_stores, pg_cluster, pg_conn, pg_schema
):
    stores = await typed_stores(left_out_fields)
    assert len(stores.warnings) == 2
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(everything=True), prefer="airtable")
    t = report.tallies
    assert (t["interactions"].present, t["conversations"].present) == (62, 4)
    assert all(tally.conflicting == 0 and tally.replaced == 0 for tally in t.values()) and report.problems == []
    s = quote_ident(pg_schema)
    assert (
        await pg_conn.fetchval(f"SELECT sentiment FROM {s}.conversations WHERE conversation_id = $1", cid("c1"))
        == "calm"
    )
    assert await pg_conn.fetchval(f"SELECT array_agg(DISTINCT intent) FROM {s}.interactions") == ["greeting", None]


def computed_intents(emulator):
    """What Airtable shows in the Intent formula field (the emulator computes no formula)."""
    table = emulator.bases[BASE].table("Interactions")
    for record in table.records.values():
        record.cells[table.field("Intent").id] = "computed"


async def test_a_left_out_field_is_not_recovered_as_ours(typed_stores, stores_emulator, pg_cluster, pg_conn, pg_schema):
    stores = await typed_stores(left_out_fields)
    stores_emulator.run(computed_intents, stores_emulator.emulator)
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.escalations")
    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    await pg_conn.execute(f"DELETE FROM {s}.conversations")
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(everything=True))
    assert report.tallies["interactions"].inserted == 62 and report.problems == []
    # Intent is the operators' formula ('computed' everywhere): none of it was written by chatledger
    assert await pg_conn.fetchval(f"SELECT array_agg(DISTINCT intent) FROM {s}.interactions") == [None]


def without_phones(base):
    base.table("Conversations").remove_field("CustomerPhone")
    base.table("Escalations").remove_field("CustomerPhone")


async def test_recover_by_phone_without_the_phone_field_says_why_and_reads_nothing(
    typed_stores, pg_cluster, pg_conn, pg_schema
):
    stores = await typed_stores(without_phones)
    assert "Conversations.CustomerPhone is missing" in stores.warnings[0]  # only a warning for delivery
    await pg_conn.execute(f"DELETE FROM {quote_ident(pg_schema)}.interactions")
    with pytest.raises(
        SinkError,
        match=r"^--phone selects conversations by their phone, but "
        r"Conversations\.CustomerPhone is missing: nothing was recovered",
    ):
        await recover(stores.client, pg_cluster, pg_schema, Selection(phone="5511900000002"))
    assert await pg_conn.fetchval(f"SELECT count(*) FROM {quote_ident(pg_schema)}.interactions") == 0


def without_interaction_conversations(base):
    base.table("Interactions").remove_field("ConversationId")


async def test_a_table_that_cannot_be_selected_by_conversation_is_skipped_and_said(
    typed_stores, pg_cluster, pg_conn, pg_schema
):
    stores = await typed_stores(without_interaction_conversations)
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.escalations")
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(conversation=cid("c1")))
    assert report.problems == [
        "Interactions.ConversationId is missing: interactions cannot be selected by conversation, none were read "
        "(`chatledger airtable init` creates a missing field)"
    ]
    t = report.tallies
    assert t["interactions"].read == 0 and (t["conversations"].present, t["escalations"].inserted) == (1, 1)


def without_times(base):
    base.table("Interactions").remove_field("Timestamp")
    base.table("Escalations").remove_field("CreatedAt")


async def test_a_table_that_cannot_be_selected_by_time_is_skipped_and_said(
    typed_stores, pg_cluster, pg_conn, pg_schema
):
    stores = await typed_stores(without_times)
    s = quote_ident(pg_schema)
    await pg_conn.execute(f"DELETE FROM {s}.escalations")
    await pg_conn.execute(f"DELETE FROM {s}.interactions")
    await pg_conn.execute(f"DELETE FROM {s}.conversations")
    since = datetime.fromtimestamp(T0 + 3000, UTC).isoformat()
    report = await recover(stores.client, pg_cluster, pg_schema, Selection(since=since))
    assert report.problems == [
        f"{table}.{field} is missing: {kind} cannot be selected by time, none were read (`chatledger airtable init` "
        "creates a missing field; `recover --all` reads every record)"
        for table, field, kind in (
            ("Interactions", "Timestamp", "interactions"),
            ("Escalations", "CreatedAt", "escalations"),
        )
    ]
    t = report.tallies
    assert t["conversations"].inserted == 4 and t["interactions"].read == t["escalations"].read == 0


def edit_airtable(emulator, table_name, key_field, key, **cells):
    """Change one record's cells in the base as an operator would in Airtable's UI (None empties a cell)."""

    def edit():
        table = emulator.emulator.bases[BASE].table(table_name)
        [record] = [r for r in table.records.values() if table.by_name(r)[key_field] == key]
        for name, value in cells.items():
            record.cells[table.field(name).id] = value

    emulator.run(edit)


async def lost_and_changed(stores, stores_emulator, pg_conn, s):
    """c3's wamid.7 emptied in Airtable (Content) and marked read there; c1 renamed there while PostgreSQL
    holds a priority Airtable leaves empty; the escalation assigned there, its Priority emptied; a long text
    PostgreSQL holds whole and Airtable cut."""
    wamid7 = await pg_conn.fetchval(f"SELECT interaction_id FROM {s}.interactions WHERE message_id = 'wamid.7'")
    edit_airtable(stores_emulator, "Interactions", "InteractionId", wamid7, Content=None, Status="read")
    await pg_conn.execute(f"UPDATE {s}.conversations SET priority = 'HIGH' WHERE conversation_id = $1", cid("c1"))
    edit_airtable(stores_emulator, "Conversations", "ConversationId", cid("c1"), CustomerName="Nome Novo")
    escalation = await pg_conn.fetchval(f"SELECT escalation_id FROM {s}.escalations")
    edit_airtable(stores_emulator, "Escalations", "EscalationId", escalation, Priority=None, Status="assigned")
    whole = "ção 👋 " * 20_000  # 120,000 characters; Airtable holds its first 100,000 UTF-16 units
    wamid3 = await pg_conn.fetchval(f"SELECT interaction_id FROM {s}.interactions WHERE message_id = 'wamid.3'")
    await pg_conn.execute(f"UPDATE {s}.interactions SET content = $1 WHERE interaction_id = $2", whole, wamid3)
    edit_airtable(stores_emulator, "Interactions", "InteractionId", wamid3, Content=cut_text(whole), Status="read")
    return SimpleNamespace(wamid7=wamid7, wamid3=wamid3, escalation=escalation, whole=whole)


async def test_prefer_airtable_replaces_only_what_differs_never_with_an_empty_or_assumed_value(
    stores, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    s = quote_ident(pg_schema)
    changed = await lost_and_changed(stores, stores_emulator, pg_conn, s)

    report = await recover(stores.client, pg_cluster, pg_schema, Selection(everything=True), prefer="airtable")

    t = report.tallies
    assert (t["interactions"].conflicting, t["interactions"].replaced) == (2, 2)
    assert (t["conversations"].replaced, t["escalations"].replaced) == (1, 1)
    row = await pg_conn.fetchrow(
        f"SELECT content, status FROM {s}.interactions WHERE interaction_id = $1", changed.wamid7
    )
    assert tuple(row) == ("hello 7", "read")  # the empty Content did not wipe PostgreSQL's
    row = await pg_conn.fetchrow(
        f"SELECT content, status FROM {s}.interactions WHERE interaction_id = $1", changed.wamid3
    )
    assert tuple(row) == (changed.whole, "read")  # the cut text is the same text: kept whole
    row = await pg_conn.fetchrow(
        f"SELECT customer_name, priority FROM {s}.conversations WHERE conversation_id = $1", cid("c1")
    )
    assert tuple(row) == ("Nome Novo", "HIGH")  # an empty Priority is not "normal"
    row = await pg_conn.fetchrow(f"SELECT status, priority FROM {s}.escalations")
    assert tuple(row) == ("assigned", "MEDIUM")


async def test_a_day_from_a_date_field_never_replaces_a_time_of_that_day(
    renamed_stores, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    s = quote_ident(pg_schema)
    wamid7 = await pg_conn.fetchval(f"SELECT interaction_id FROM {s}.interactions WHERE message_id = 'wamid.7'")
    before = await pg_conn.fetchval(f"SELECT occurred_at FROM {s}.interactions WHERE interaction_id = $1", wamid7)
    edit_airtable(stores_emulator, "Interactions", "InteractionId", wamid7, Status="read")
    async with PostgresRows.open(pg_cluster.dsn(), pg_schema) as pg:
        report = await Recovery(renamed_stores.client, renamed_stores.names, pg, prefer="airtable").run(
            Selection(conversation=cid("c3"))
        )
    assert report.tallies["interactions"].replaced == 1
    row = await pg_conn.fetchrow(f"SELECT status, occurred_at FROM {s}.interactions WHERE interaction_id = $1", wamid7)
    assert tuple(row) == ("read", before)  # not midnight: the day is all the field holds, and it is the same


async def test_diff_names_each_conflicting_row_and_its_fields_with_both_values(
    stores, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    s = quote_ident(pg_schema)
    changed = await lost_and_changed(stores, stores_emulator, pg_conn, s)
    async with PostgresRows.open(pg_cluster.dsn(), pg_schema) as pg:
        report = await Recovery(stores.client, NAMES, pg, diff=True).run(Selection(everything=True))
    diffs = {(d["table"], d["key"]): d["fields"] for d in report.as_dict()["diffs"]}
    assert diffs == {
        ("conversations", cid("c1")): {"customer_name": ["Nome Novo", "Name c1"]},
        ("interactions", changed.wamid7): {"status": ["read", "delivered"]},
        ("interactions", changed.wamid3): {"status": ["read", "delivered"]},
        ("escalations", changed.escalation): {"status": ["assigned", "pending"]},
    }
    # the content Airtable left empty is no difference; a long value is shortened
    await pg_conn.execute(
        f"UPDATE {s}.interactions SET content = $1 WHERE interaction_id = $2", "é" * 500, changed.wamid7
    )
    edit_airtable(stores_emulator, "Interactions", "InteractionId", changed.wamid7, Content="hello 7")
    async with PostgresRows.open(pg_cluster.dsn(), pg_schema) as pg:
        report = await Recovery(stores.client, NAMES, pg, diff=True).run(Selection(conversation=cid("c3")))
    [fields] = [d["fields"] for d in report.as_dict()["diffs"] if d["key"] == changed.wamid7]
    assert fields == {"content": ["hello 7", "é" * 60 + "… (500 characters)"], "status": ["read", "delivered"]}


async def test_dry_run_writes_nothing_and_counts_what_a_run_would_do(
    stores, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    s = quote_ident(pg_schema)
    await lost_and_changed(stores, stores_emulator, pg_conn, s)
    await pg_conn.execute(f"DELETE FROM {s}.escalations")
    await pg_conn.execute(f"DELETE FROM {s}.interactions WHERE conversation_id = ANY($1)", [cid("c0"), cid("c2")])
    await pg_conn.execute(f"DELETE FROM {s}.conversations WHERE conversation_id = ANY($1)", [cid("c0"), cid("c2")])
    before = await dump(pg_conn, pg_schema)
    everything = (
        f"SELECT (SELECT count(*) FROM {s}.conversations), (SELECT count(*) FROM {s}.interactions), "
        f"(SELECT count(*) FROM {s}.escalations), (SELECT count(*) FROM {s}.recover_backup)"
    )
    counts = tuple(await pg_conn.fetchrow(everything))

    async with PostgresRows.open(pg_cluster.dsn(), pg_schema) as pg:
        dry = await Recovery(stores.client, NAMES, pg, prefer="airtable", dry_run=True).run(Selection(everything=True))

    assert await dump(pg_conn, pg_schema) == before and tuple(await pg_conn.fetchrow(everything)) == counts
    assert dry.as_dict()["dry_run"] is True and dry.as_dict()["run_id"] is None
    real = await recover(stores.client, pg_cluster, pg_schema, Selection(everything=True), prefer="airtable")
    assert dry.as_dict()["tables"] == real.as_dict()["tables"]  # interactions of missing conversations included
    t = real.tallies
    assert (t["conversations"].inserted, t["interactions"].inserted, t["escalations"].inserted) == (2, 30, 1)
    assert t["interactions"].replaced == 2


async def test_replaced_rows_are_kept_and_undo_puts_them_back(
    stores, stores_emulator, pg_cluster, pg_conn, pg_schema, tmp_path, capsys
):
    s = quote_ident(pg_schema)
    changed = await lost_and_changed(stores, stores_emulator, pg_conn, s)
    await pg_conn.execute(
        f"UPDATE {s}.interactions SET content = 'edited in PostgreSQL' WHERE interaction_id = $1", changed.wamid7
    )
    edit_airtable(stores_emulator, "Interactions", "InteractionId", changed.wamid7, Content="hello 7")
    config = cli_config(tmp_path, stores_emulator, pg_cluster, pg_schema)
    assert (
        await asyncio.to_thread(main, ["recover", "--all", "--prefer", "airtable", "--diff", "--config", str(config)])
        == 0
    )
    out = capsys.readouterr().out
    assert (
        f'  interactions {changed.wamid7}: content "hello 7" | "edited in PostgreSQL"; '
        'status "read" | "delivered"' in out
    )
    [run] = re.findall(
        rf"kept in {re.escape(s)}\.recover_backup as run (\S+): `chatledger recover --undo \1` "
        "puts them back",
        out,
    )
    kept = await pg_conn.fetch(
        f"SELECT table_name, row_key, columns, old_row FROM {s}.recover_backup WHERE run_id = $1", run
    )
    assert {(r["table_name"], r["row_key"]): {c: json.loads(r["old_row"])[c] for c in r["columns"]} for r in kept} == {
        ("conversations", cid("c1")): {"customer_name": "Name c1"},
        ("escalations", changed.escalation): {"status": "pending"},
        ("interactions", changed.wamid7): {"content": "edited in PostgreSQL", "status": "delivered"},
        ("interactions", changed.wamid3): {"status": "delivered"},
    }
    # since the recover, the escalation was resolved: undo leaves what changed since as it is
    escalation = "SELECT status FROM {s}.escalations"
    await pg_conn.execute(f"UPDATE {s}.escalations SET status = 'resolved'")

    assert await asyncio.to_thread(main, ["recover", "--undo", run, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"undid recover run {run}: 3 rows put back" in out
    assert f"escalations {changed.escalation}: status changed since, left as it is" in out
    row = await pg_conn.fetchrow(
        f"SELECT content, status FROM {s}.interactions WHERE interaction_id = $1", changed.wamid7
    )
    assert tuple(row) == ("edited in PostgreSQL", "delivered")
    assert (
        await pg_conn.fetchval(f"SELECT customer_name FROM {s}.conversations WHERE conversation_id = $1", cid("c1"))
        == "Name c1"
    )
    assert await pg_conn.fetchval(escalation.format(s=s)) == "resolved"

    assert await asyncio.to_thread(main, ["recover", "--undo", run, "--config", str(config)]) == EXIT_FAILURE
    assert f"recover run {run} was undone already" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["recover", "--undo", "nope", "--config", str(config)]) == EXIT_FAILURE
    assert "nothing found: no recover run 'nope'" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["recover", "--undo", run, "--dry-run", "--config", str(config)]) == 64


async def test_an_undo_that_puts_nothing_back_says_so_and_can_be_tried_again(
    stores, stores_emulator, pg_cluster, pg_conn, pg_schema, tmp_path, capsys
):
    s = quote_ident(pg_schema)
    await lost_and_changed(stores, stores_emulator, pg_conn, s)
    config = cli_config(tmp_path, stores_emulator, pg_cluster, pg_schema)
    assert await asyncio.to_thread(main, ["recover", "--all", "--prefer", "airtable", "--config", str(config)]) == 0
    [run] = re.findall(r"recover_backup as run (\S+):", capsys.readouterr().out)
    kept = await pg_conn.fetch(
        f"SELECT table_name, row_key, columns, new_row FROM {s}.recover_backup WHERE run_id = $1", run
    )
    keys = {"conversations": "conversation_id", "interactions": "interaction_id", "escalations": "escalation_id"}
    for entry in kept:  # every value the run wrote was changed since
        for column in entry["columns"]:
            await pg_conn.execute(
                f"UPDATE {s}.{entry['table_name']} SET {column} = {column} || '!' "
                f"WHERE {keys[entry['table_name']]} = $1",
                entry["row_key"],
            )
    assert await asyncio.to_thread(main, ["recover", "--undo", run, "--config", str(config)]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert "nothing put back" in captured.err and "undid" not in captured.out
    for entry in kept:  # the operator reverts those changes: the undo can still be made
        for column in entry["columns"]:
            await pg_conn.execute(
                f"UPDATE {s}.{entry['table_name']} SET {column} = rtrim({column}, '!') "
                f"WHERE {keys[entry['table_name']]} = $1",
                entry["row_key"],
            )
    assert await asyncio.to_thread(main, ["recover", "--undo", run, "--config", str(config)]) == 0
    assert f"undid recover run {run}: {len(kept)} rows put back" in capsys.readouterr().out


def cli_config(tmp_path, stores_emulator, pg_cluster, pg_schema):
    return write_config(
        tmp_path,
        extra=(
            f'[airtable]\napi_key = "{TOKEN}"\nbase_id = "{BASE}"\nendpoint_url = "{stores_emulator.url}"\n'
            f'[postgres]\ndsn = "{pg_cluster.dsn()}"\nschema = "{pg_schema}"\n'
        ),
    )


@pytest.mark.parametrize("selection", [["--conversation", "nope"], ["--phone", "+55 11 90000-0099"]])
async def test_a_selection_that_matches_nothing_says_so_and_exits_1(
    stores, stores_emulator, pg_cluster, pg_schema, tmp_path, capsys, selection
):
    config = cli_config(tmp_path, stores_emulator, pg_cluster, pg_schema)
    assert await asyncio.to_thread(main, ["recover", *selection, "--config", str(config)]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert "nothing found in Airtable for " in captured.err and "nothing was recovered" in captured.err
    assert "inserted" not in captured.out  # no all-zero table
    assert await asyncio.to_thread(main, ["recover", *selection, "--json", "--config", str(config)]) == EXIT_FAILURE
    assert json.loads(capsys.readouterr().out)["tables"]["conversations"]["read"] == 0


async def test_phone_without_the_phone_field_stops_with_the_reason_and_no_retry_hint(
    typed_stores, stores_emulator, pg_cluster, pg_schema, tmp_path, capsys
):
    await typed_stores(without_phones)
    config = cli_config(tmp_path, stores_emulator, pg_cluster, pg_schema)
    assert (
        await asyncio.to_thread(main, ["recover", "--phone", "5511900000002", "--config", str(config)]) == EXIT_FAILURE
    )
    err = capsys.readouterr().err
    assert "Conversations.CustomerPhone is missing: nothing was recovered" in err
    assert "run it again" not in err
