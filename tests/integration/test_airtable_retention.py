"""[airtable] retention_days: old records PostgreSQL holds leave the base, nothing else (real cluster,
emulator over HTTP, real pyairtable)."""

from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from daemon.sinks.airtable_retention import purge_airtable
from daemon.sinks.airtable_schema import BaseNames
from daemon.sinks.postgres import quote_ident
from daemon.sinks.postgres_rows import PostgresRows
from tests.integration.conftest import BASE, NAMES, T0, cid


def airtable(emulator, table):
    def read():
        t = emulator.emulator.bases[BASE].table(table)
        return [t.by_name(r) for r in t.records.values()]

    return emulator.run(read)


def requests(emulator):
    return emulator.run(emulator.emulator.stats)[BASE]["requests"]


async def test_old_records_postgresql_holds_are_deleted_and_nothing_else(
    stores, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    s = quote_ident(pg_schema)
    # PostgreSQL lost conversation c3 (and its messages): Airtable's copy is the only one, it stays
    await pg_conn.execute(f"DELETE FROM {s}.interactions WHERE conversation_id = $1", cid("c3"))
    await pg_conn.execute(f"DELETE FROM {s}.conversations WHERE conversation_id = $1", cid("c3"))
    waits = []

    async def spare():
        waits.append(1)

    sent = requests(stores_emulator)
    deleted = await purge_airtable(
        stores.client,
        BaseNames(NAMES),
        partial(PostgresRows.open, pg_cluster.dsn(), pg_schema),
        datetime.now(UTC) - timedelta(days=30),
        spare,
    )

    # c1's escalation is still pending: it stays, and so does its conversation
    assert deleted == {"interactions": 45, "escalations": 0, "conversations": 2}
    assert {r["ConversationId"] for r in airtable(stores_emulator, "Interactions")} == {cid("c3")}
    assert len(airtable(stores_emulator, "Interactions")) == 15
    assert [r["ConversationId"] for r in airtable(stores_emulator, "Escalations")] == [cid("c1")]
    assert sorted(r["ConversationId"] for r in airtable(stores_emulator, "Conversations")) == sorted(
        [cid("c1"), cid("c3")]
    )
    assert len(waits) == requests(stores_emulator) - sent  # every request waited for spare budget first
    assert await pg_conn.fetchval(f"SELECT count(*) FROM {s}.interactions") == 45  # PostgreSQL untouched


async def test_nothing_younger_than_the_cutoff_goes(stores, stores_emulator, pg_cluster, pg_schema):
    async def spare():
        pass

    cutoff = datetime.fromtimestamp(T0, UTC)  # the day the messages came: the day itself is kept
    deleted = await purge_airtable(
        stores.client, BaseNames(NAMES), partial(PostgresRows.open, pg_cluster.dsn(), pg_schema), cutoff, spare
    )
    assert deleted == {"interactions": 0, "escalations": 0, "conversations": 0}
    assert len(airtable(stores_emulator, "Interactions")) == 60


async def test_the_daemon_runs_it_on_spare_budget(
    stores, stores_emulator, pg_cluster, pg_schema, tmp_path, monkeypatch
):
    import asyncio

    from daemon import app, loops
    from daemon.config import load_config
    from tests.integration.conftest import TOKEN
    from tests.support import write_config

    monkeypatch.setattr(loops, "RETENTION_FIRST_DELAY", 0.0)
    path = write_config(
        tmp_path,
        extra=(
            f'[airtable]\napi_key = "{TOKEN}"\nbase_id = "{BASE}"\nendpoint_url = "{stores_emulator.url}"\n'
            f"retention_days = 30\nmax_records = 1000\n"
            f'[postgres]\ndsn = "{pg_cluster.dsn()}"\nschema = "{pg_schema}"\n'
        ),
    )
    daemon = app.Daemon(load_config(path), path)
    running = asyncio.create_task(daemon.run())
    try:
        for _ in range(600):  # a bound for a failure only: the purge's end is the state awaited
            if len(airtable(stores_emulator, "Conversations")) == 1:
                break
            assert not running.done(), running
            await asyncio.sleep(0.1)
        assert airtable(stores_emulator, "Interactions") == []
        # c1's escalation is still pending: it and its conversation stay
        assert [r["ConversationId"] for r in airtable(stores_emulator, "Conversations")] == [cid("c1")]
        assert len(airtable(stores_emulator, "Escalations")) == 1
        for _ in range(600):
            if (await daemon.snapshot())["sinks"]["airtable"].get("records") == 2:
                break
            await asyncio.sleep(0.1)
        assert (await daemon.snapshot())["sinks"]["airtable"]["records"] == 2  # the count follows the deletions
    finally:
        daemon._stop.set()
        assert await asyncio.wait_for(running, 30) == 0


async def test_escalations_stay_while_open_recently_resolved_or_their_conversation_is_active(
    renamed_stores, stores_emulator, pg_cluster, pg_conn, pg_schema
):
    """Operators work from the Escalations table: only what is resolved, and was so before the cutoff, in a
    conversation quiet since, leaves it; a conversation keeps any escalation that stays. Through the
    operators' own field names."""
    from daemon.sinks.airtable_schema import parse_field_mapping
    from tests.integration.conftest import RENAMED

    renames = {"Escalations.Status": "State", "Escalations.ResolvedAt": "Closed on"}

    def rename():
        table = stores_emulator.emulator.bases[BASE].table("Escalations")
        for key, name in renames.items():
            table.field(key.split(".")[1]).name = name

    stores_emulator.run(rename)
    names = BaseNames(NAMES, parse_field_mapping({**RENAMED, **renames}))
    s = quote_ident(pg_schema)
    old, now = "2026-09-22", datetime.now(UTC)
    yesterday = (now - timedelta(days=1)).date().isoformat()
    escalations = {  # id: (contact, state, resolved on)
        "e-done": ("c0", "resolved", old),  # the only one that goes, and c0 with it
        "e-recent": ("c2", "resolved", yesterday),
        "e-undated": ("c2", "resolved", None),
        "e-active": ("c3", "resolved", old),  # c3 wrote again since (PostgreSQL has it, the base not yet)
    }
    for key, (contact, state, resolved) in escalations.items():
        await pg_conn.execute(
            f"INSERT INTO {s}.escalations (escalation_id, ticket_id, conversation_id, status, created_at, resolved_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            key,
            "T-" + key,
            cid(contact),
            state,
            datetime(2026, 9, 21, tzinfo=UTC),
            datetime.fromisoformat(resolved).replace(tzinfo=UTC) if resolved else None,
        )
        cells = {"EscalationId": key, "ConversationId": cid(contact), "State": state, "CreatedAt": "2026-09-21"}
        if resolved:
            cells["Closed on"] = resolved
        await renamed_stores.client.upsert("Escalations", "EscalationId", [cells])
    await pg_conn.execute(
        f"UPDATE {s}.conversations SET last_activity = $1 WHERE conversation_id = $2",
        now - timedelta(hours=2),
        cid("c3"),
    )

    async def spare():
        pass

    deleted = await purge_airtable(
        renamed_stores.client,
        names,
        partial(PostgresRows.open, pg_cluster.dsn(), pg_schema),
        now - timedelta(days=30),
        spare,
    )

    assert deleted == {"interactions": 60, "escalations": 1, "conversations": 1}
    assert sorted(r["EscalationId"] or "" for r in airtable(stores_emulator, "Escalations")) == sorted(
        [
            "e-recent",
            "e-undated",
            "e-active",
            await pg_conn.fetchval(
                f"SELECT escalation_id FROM {s}.escalations WHERE conversation_id = $1 AND status = 'pending'",
                cid("c1"),
            ),
        ]
    )
    assert sorted(r["ConversationId"] for r in airtable(stores_emulator, "Conversations")) == sorted(
        [cid("c1"), cid("c2"), cid("c3")]
    )


def remove_fields(emulator, *keys):
    def apply():
        for key in keys:
            table, name = key.split(".")
            emulator.emulator.bases[BASE].table(table).remove_field(name)

    emulator.run(apply)


async def test_a_field_the_base_lacks_skips_what_needs_it_instead_of_failing_every_run(
    stores, stores_emulator, pg_cluster, pg_schema
):
    """Timestamp and LastActivity missing are delivery warnings only: retention must not answer them with a
    formula Airtable refuses (422) every day, but keep those tables, say why, and purge the rest."""
    from loguru import logger

    remove_fields(stores_emulator, "Interactions.Timestamp", "Conversations.LastActivity", "Escalations.ResolvedAt")
    lines = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")

    async def spare():
        pass

    try:
        deleted = await purge_airtable(
            stores.client,
            BaseNames(NAMES),
            partial(PostgresRows.open, pg_cluster.dsn(), pg_schema),
            datetime.now(UTC) - timedelta(days=30),
            spare,
        )
    finally:
        logger.remove(handler)
    assert deleted == {"interactions": 0, "escalations": 0, "conversations": 0}
    assert len(airtable(stores_emulator, "Interactions")) == 60
    said = "".join(lines)
    for gap, kept in (
        ("Interactions.Timestamp", "Interactions"),
        ("Conversations.LastActivity", "Conversations"),
        ("Escalations.ResolvedAt", "Escalations"),
    ):
        assert f"{gap} is missing: every record of {kept} is kept" in said


def emulator_records(emulator):
    return emulator.run(lambda: emulator.emulator.bases[BASE].record_count)


def set_cap(emulator, max_records):
    def apply():
        emulator.emulator.bases[BASE].max_records = max_records

    emulator.run(apply)


class CutShort(Exception):
    pass


async def test_the_records_count_follows_each_deleted_chunk_even_of_a_purge_cut_short(
    stores, stores_emulator, pg_cluster, pg_schema
):
    from daemon.sinks.airtable import AirtableSink

    sink = AirtableSink(stores.client, NAMES, stores.journal.conversations)
    sink.max_records = 1000
    await sink.check()
    assert sink.records == emulator_records(stores_emulator) == 65

    async def spare():
        if sink.records <= 65 - 20:  # two chunks deleted: the run stops (an error, a stop) before a third
            raise CutShort

    with pytest.raises(CutShort):
        await purge_airtable(
            stores.client,
            BaseNames(NAMES),
            partial(PostgresRows.open, pg_cluster.dsn(), pg_schema),
            datetime.now(UTC) - timedelta(days=30),
            spare,
            plan=sink.plan,
            delete=sink.delete_records,
        )
    assert emulator_records(stores_emulator) == 45
    assert sink.records == 45


async def test_a_recount_racing_a_deletion_counts_it_once(stores, stores_emulator):
    """A purge (or forget) deletes while a recount lists the base: whether the listing saw the records or
    not, the count ends equal to the base."""
    import asyncio

    from daemon.sinks.airtable import AirtableSink

    sink = AirtableSink(stores.client, NAMES, stores.journal.conversations)
    sink.max_records = 1000
    await sink.check()
    assert sink.records == 65
    interactions, _ = await stores.client.list_page("Interactions", None, None)
    listing = stores.client.list_page
    deleting = []

    async def list_page(table, formula, offset, fields=()):
        page, after = await listing(table, formula, offset, fields)
        if table == "Conversations" and not deleting:
            # the recount has counted every conversation; two of them and two interactions it has not
            # reached yet are deleted now
            deleting.append(
                asyncio.gather(
                    sink.delete_records("Conversations", [r["id"] for r in page[:2]]),
                    sink.delete_records("Interactions", [r["id"] for r in interactions[:2]]),
                )
            )
            await asyncio.wait(deleting, timeout=2)  # bounds the wait only: a deletion may wait for the recount
        return page, after

    stores.client.list_page = list_page
    try:
        sink.operator_sync()  # `chatledger sync`: count again
        await sink.check()
        await deleting[0]
    finally:
        stores.client.list_page = listing
    assert emulator_records(stores_emulator) == 61
    assert sink.records == 61


async def test_a_base_at_its_records_cap_is_drained_by_retention_without_an_operator(
    stores, stores_emulator, pg_cluster, pg_schema, tmp_path, monkeypatch
):
    """The case retention exists for: the base is full, deliveries are held (`blocked`, pending), and the
    old records PostgreSQL holds make the room. No daily schedule, no backoff, no operator: the block itself
    starts the purge, and the purge's end resumes delivery."""
    import asyncio
    import time

    from daemon import app, delivery, loops
    from daemon.config import load_config
    from daemon.events import normalize
    from daemon.journal import Journal
    from tests.integration.conftest import RECEIVED, TOKEN, message
    from tests.support import write_config

    monkeypatch.setattr(loops, "RETENTION_FIRST_DELAY", 3600.0)  # the daily run is not what drains it
    monkeypatch.setattr(loops, "RETENTION_PRESSURE_POLL", 0.05)
    monkeypatch.setattr(loops, "SPARE_POLL", 0.05)
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 3600.0)  # nor a retry by backoff
    full = emulator_records(stores_emulator)
    set_cap(stores_emulator, full)
    path = write_config(
        tmp_path,
        extra=(
            f'[airtable]\napi_key = "{TOKEN}"\nbase_id = "{BASE}"\nendpoint_url = "{stores_emulator.url}"\n'
            f"retention_days = 30\nlinger_s = 0\n"
            f'[postgres]\ndsn = "{pg_cluster.dsn()}"\nschema = "{pg_schema}"\n'
        ),
    )
    config = load_config(path)
    journal = await Journal.open(config.journal.path, config.enabled_sinks)
    recent = int(time.time()) - T0 - 3600
    await journal.append([normalize(message(100 + i, "c7", recent + i), RECEIVED) for i in range(12)])
    await journal.close()

    daemon = app.Daemon(config, path)
    running = asyncio.create_task(daemon.run())
    try:
        while "airtable" not in daemon.workers:  # started
            assert not running.done(), running
            await asyncio.sleep(0.05)
        for _ in range(1200):  # a bound for a failure only: the drained state is what is awaited
            airtable_sink = (await daemon.snapshot())["sinks"]["airtable"]
            if airtable_sink["pending"] == 0 and airtable_sink["delivered"] == 12:
                break
            assert not running.done(), running
            await asyncio.sleep(0.1)
        assert airtable_sink["pending"] == 0 and airtable_sink["delivered"] == 12 and airtable_sink["dead"] == 0
        assert airtable_sink["state"] == "up"
        assert sorted(r["MessageId"] for r in airtable(stores_emulator, "Interactions")) == sorted(
            f"wamid.{100 + i}" for i in range(12)
        )
        assert emulator_records(stores_emulator) <= full
    finally:
        daemon._stop.set()
        assert await asyncio.wait_for(running, 30) == 0
