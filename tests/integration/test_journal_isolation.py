"""A write the journal refuses for its own data never fails the other requests of its group commit."""

import asyncio
import dataclasses
import sqlite3
from datetime import UTC, datetime

import pytest

from daemon.events import normalize
from daemon.journal import Journal

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def message(i: int):
    return normalize({"title": "incoming_message", "info": {"message": {"id": f"m{i}"}}, "contact": {"id": "c"}}, NOW)


def unstorable(i: int):
    """An event that skipped intake's cleaning (a bug's stand-in): SQLite cannot encode its title."""
    return dataclasses.replace(message(i), title="incoming\ud800", dedup_key=f"bad{i}")


@pytest.fixture
async def journal(tmp_path):
    journal = await Journal.open(tmp_path / "journal.sqlite", ["postgres"])
    yield journal
    await journal.close()


def rows(path, sql):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_one_requests_unstorable_event_is_quarantined_and_its_group_commits(journal):
    commits = journal.stats.commits
    results = await asyncio.gather(
        journal.append([message(1)]),
        journal.append([message(2), unstorable(3), message(4)]),
        journal.append([message(5)]),
    )
    assert [(r.accepted, r.duplicates, r.rejected) for r in results] == [(1, 0, 0), (2, 0, 1), (1, 0, 0)]
    assert journal.stats.commits == commits + 1  # still one commit (one fsync) for the whole group
    assert journal.writable
    assert rows(journal.path, "SELECT message_id FROM events ORDER BY id") == [("m1",), ("m2",), ("m4",), ("m5",)]
    ((reason, raw),) = rows(journal.path, "SELECT reason, raw FROM quarantine")
    assert reason.startswith("the journal could not store it: UnicodeEncodeError")
    assert '"m3"' in raw  # the element itself, kept for inspection
    assert rows(journal.path, "SELECT count(*) FROM deliveries") == [(4,)]
    counters = dict(rows(journal.path, "SELECT name, value FROM counters"))
    assert (counters["accepted"], counters["rejected"]) == (4, 1)


async def test_a_failing_write_fails_alone(journal):
    async def broken(conn):
        raise ValueError("bad value in an op")

    written, appended = await asyncio.gather(
        journal.write(broken), journal.append([message(1)]), return_exceptions=True
    )
    assert isinstance(written, ValueError)
    assert appended.accepted == 1
    assert rows(journal.path, "SELECT count(*) FROM events") == [(1,)]
    assert journal.writable


async def test_duplicates_still_count_after_isolation(journal):
    await journal.append([message(1)])
    first, second = await asyncio.gather(
        journal.append([message(1), unstorable(2)]), journal.append([message(3), message(3)])
    )
    assert (first.accepted, first.duplicates, first.rejected) == (0, 1, 1)
    assert (second.accepted, second.duplicates, second.rejected) == (1, 1, 0)


async def test_a_refused_event_whose_text_the_log_cannot_read_still_leaves_its_group_committed(journal):
    import io

    from daemon.logs import setup_logging

    setup_logging("INFO", stream=io.StringIO())  # the daemon's masking patcher, which once raised here
    try:
        hostile = dataclasses.replace(unstorable(2), dedup_key="msg:http://[x\ud800:m2")
        first, second = await asyncio.gather(journal.append([message(1)]), journal.append([hostile, message(3)]))
    finally:
        setup_logging("INFO")
    assert (first.accepted, second.accepted, second.rejected) == (1, 1, 1)
    assert journal.writable
