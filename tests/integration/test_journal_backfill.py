"""Events journaled before a sink was enabled: made pending for it at start, and by `replay`."""

import asyncio
import sqlite3
from datetime import UTC, datetime

from loguru import logger

from daemon.backfill import Backfill
from daemon.events import normalize
from daemon.journal import Journal, Requeue
from tests.support import until

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def message(i: int):
    return normalize({"title": "incoming_message", "info": {"message": {"id": f"m{i}"}}, "contact": {"id": "c"}}, NOW)


def states(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT sink, state, count(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2").fetchall()


async def journal_only(path, count):
    """The README's first run: no sink enabled, `count` events journaled."""
    journal = await Journal.open(path, [])
    try:
        await journal.append([message(i) for i in range(count)])
    finally:
        await journal.close()


async def test_events_journaled_before_the_sinks_become_pending_in_batches(tmp_path):
    path = tmp_path / "j.sqlite"
    await journal_only(path, 7)
    journal = await Journal.open(path, ["postgres", "airtable"])
    try:
        assert [e.id for e in await journal.pending("postgres", 0, 100)] == []  # the bug: nothing to deliver
        heard = []
        journal.add_listener(heard.append)  # the delivery workers' wake-up
        commits = journal.stats.commits
        backfill = Backfill(journal, ["postgres", "airtable"], batch=3)
        assert backfill.status("postgres") == {"state": "waiting", "total": None, "done": 0, "to_go": None}
        await backfill.run()

        assert [e.id for e in await journal.pending("postgres", 0, 100)] == list(range(1, 8))
        assert [e.id for e in await journal.pending("airtable", 0, 100)] == list(range(1, 8))
        assert journal.stats.commits - commits == 6  # 3 + 3 + 1 rows a transaction, per sink
        assert heard and heard[-1] == 7
        assert backfill.status("postgres") == {"state": "done", "total": 7, "done": 7, "to_go": 0}
        assert backfill.status("airtable") == {"state": "done", "total": 7, "done": 7, "to_go": 0}

        again = Backfill(journal, ["postgres", "airtable"], batch=3)
        await again.run()  # idempotent: nothing twice
        assert again.status("postgres") == {"state": "done", "total": 0, "done": 0, "to_go": 0}
        assert states(path) == [("airtable", "pending", 7), ("postgres", "pending", 7)]
    finally:
        await journal.close()


async def test_only_the_sink_enabled_later_is_filled_and_new_events_are_not_doubled(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = await Journal.open(path, ["postgres"])
    try:
        await journal.append([message(i) for i in range(5)])
        await journal.mark_delivered("postgres", [1, 2, 3, 4, 5])
    finally:
        await journal.close()
    journal = await Journal.open(path, ["postgres", "airtable"])
    try:
        await journal.append([message(5)])  # after the start: its rows come from the insert itself
        lines = []
        handler = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
        try:
            await Backfill(journal, ["postgres", "airtable"]).run()
        finally:
            logger.remove(handler)
        assert states(path) == [("airtable", "pending", 6), ("postgres", "delivered", 5), ("postgres", "pending", 1)]
        said = [line for line in lines if "before" in line]
        assert len(said) == 1 and "airtable: 5 events journaled before it was enabled" in said[0]
    finally:
        await journal.close()


async def test_replay_since_and_event_make_the_missing_rows(tmp_path):
    path = tmp_path / "j.sqlite"
    await journal_only(path, 3)
    journal = await Journal.open(path, ["postgres"])
    try:
        assert await journal.requeue("postgres", Requeue(dead_only=True)) == 0  # dead letters only: none
        assert await journal.requeue("postgres", Requeue(dead_only=False, event="m1")) == 1
        assert [e.message_id for e in await journal.pending("postgres", 0, 10)] == ["m1"]
        # the other two are made pending; m1 already is
        assert await journal.requeue("postgres", Requeue(dead_only=False, since="2026-11-24T00:00:00.000Z")) == 2
        assert states(path) == [("postgres", "pending", 3)]
        assert await journal.requeue("postgres", Requeue(dead_only=False, since="2026-11-26T00:00:00.000Z")) == 0
        assert states(path) == [("postgres", "pending", 3)]
    finally:
        await journal.close()


async def test_a_journal_that_cannot_write_holds_the_backfill_until_it_can(tmp_path, monkeypatch):
    monkeypatch.setattr("daemon.backfill.RETRY_SECONDS", 0.01)
    path = tmp_path / "j.sqlite"
    await journal_only(path, 3000)
    journal = await Journal.open(path, ["postgres"])
    try:
        await journal.set_page_limit(await journal.page_count())  # the disk is full
        backfill = Backfill(journal, ["postgres"], batch=500)
        task = asyncio.create_task(backfill.run())

        async def failed_twice():
            return journal.stats.failures >= 2

        await until(failed_twice, task, "the backfill tried and waited")
        held = backfill.status("postgres")
        assert held["state"] == "running" and held["total"] == 3000 and held["done"] < 3000
        await journal.set_page_limit(None)  # space freed
        await asyncio.wait_for(task, 60)
        assert backfill.status("postgres")["done"] == 3000 and states(path) == [("postgres", "pending", 3000)]
    finally:
        await journal.close()
