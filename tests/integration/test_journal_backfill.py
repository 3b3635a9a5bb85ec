"""Events journaled before a sink was enabled: made pending for it at start, and by `replay`."""

import sqlite3
from datetime import datetime, timezone

from daemon.events import normalize
from daemon.journal import Journal, Requeue

NOW = datetime(2026, 11, 25, tzinfo=timezone.utc)


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
