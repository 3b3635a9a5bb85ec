"""[airtable] retention_days: old records PostgreSQL holds leave the base, nothing else (real cluster,
emulator over HTTP, real pyairtable)."""

from datetime import datetime, timedelta, timezone
from functools import partial

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


async def test_old_records_postgresql_holds_are_deleted_and_nothing_else(stores, stores_emulator, pg_cluster,
                                                                         pg_conn, pg_schema):
    s = quote_ident(pg_schema)
    # PostgreSQL lost conversation c3 (and its messages): Airtable's copy is the only one, it stays
    await pg_conn.execute(f"DELETE FROM {s}.interactions WHERE conversation_id = $1", cid("c3"))
    await pg_conn.execute(f"DELETE FROM {s}.conversations WHERE conversation_id = $1", cid("c3"))
    waits = []

    async def spare():
        waits.append(1)

    sent = requests(stores_emulator)
    deleted = await purge_airtable(stores.client, BaseNames(NAMES), partial(PostgresRows.open, pg_cluster.dsn(),
                                                                            pg_schema),
                                   datetime.now(timezone.utc) - timedelta(days=30), spare)

    assert deleted == {"interactions": 45, "escalations": 1, "conversations": 3}
    assert {r["ConversationId"] for r in airtable(stores_emulator, "Interactions")} == {cid("c3")}
    assert len(airtable(stores_emulator, "Interactions")) == 15
    assert airtable(stores_emulator, "Escalations") == []
    assert [r["ConversationId"] for r in airtable(stores_emulator, "Conversations")] == [cid("c3")]
    assert len(waits) == requests(stores_emulator) - sent  # every request waited for spare budget first
    assert await pg_conn.fetchval(f"SELECT count(*) FROM {s}.interactions") == 45  # PostgreSQL untouched


async def test_nothing_younger_than_the_cutoff_goes(stores, stores_emulator, pg_cluster, pg_schema):
    async def spare():
        pass

    cutoff = datetime.fromtimestamp(T0, timezone.utc)  # the day the messages came: the day itself is kept
    deleted = await purge_airtable(stores.client, BaseNames(NAMES), partial(PostgresRows.open, pg_cluster.dsn(),
                                                                            pg_schema), cutoff, spare)
    assert deleted == {"interactions": 0, "escalations": 0, "conversations": 0}
    assert len(airtable(stores_emulator, "Interactions")) == 60


async def test_the_daemon_runs_it_on_spare_budget(stores, stores_emulator, pg_cluster, pg_schema, tmp_path,
                                                  monkeypatch):
    import asyncio

    from daemon import app
    from daemon.config import load_config
    from tests.integration.conftest import TOKEN
    from tests.support import write_config

    monkeypatch.setattr(app, "RETENTION_FIRST_DELAY", 0.0)
    path = write_config(tmp_path, extra=(
        f'[airtable]\napi_key = "{TOKEN}"\nbase_id = "{BASE}"\nendpoint_url = "{stores_emulator.url}"\n'
        f'retention_days = 30\nmax_records = 1000\n'
        f'[postgres]\ndsn = "{pg_cluster.dsn()}"\nschema = "{pg_schema}"\n'))
    daemon = app.Daemon(load_config(path), path)
    running = asyncio.create_task(daemon.run())
    try:
        for _ in range(600):  # a bound for a failure only: the purge's end is the state awaited
            if not airtable(stores_emulator, "Conversations"):
                break
            assert not running.done(), running
            await asyncio.sleep(0.1)
        assert airtable(stores_emulator, "Interactions") == [] and airtable(stores_emulator, "Escalations") == []
        for _ in range(600):
            if (await daemon.snapshot())["sinks"]["airtable"].get("records") == 0:
                break
            await asyncio.sleep(0.1)
        assert (await daemon.snapshot())["sinks"]["airtable"]["records"] == 0  # the count follows the deletions
    finally:
        daemon._stop.set()
        assert await asyncio.wait_for(running, 30) == 0
