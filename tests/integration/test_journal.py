"""The journal on a real SQLite file: group commit, dedup, delivery rows, schema versions, locking."""

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest
from loguru import logger

from daemon.events import Rejected, normalize
from daemon.journal import SCHEMA_VERSION, Journal, JournalError, JournalUnavailable

NOW = datetime(2026, 11, 25, tzinfo=UTC)


def message(i: int, title: str = "incoming_message"):
    return normalize({"title": title, "info": {"message": {"id": f"m{i}"}}, "contact": {"id": "c"}}, NOW)


@pytest.fixture
async def journal(tmp_path):
    journal = await Journal.open(tmp_path / "j" / "journal.sqlite", ["postgres", "airtable"])
    yield journal
    await journal.close()


def rows(path, sql):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_concurrent_appends_share_one_commit(journal):
    results = await asyncio.gather(*(journal.append([message(i)]) for i in range(50)))
    assert [r.accepted for r in results] == [1] * 50
    assert journal.stats.commits == 1
    assert sorted(r.event_ids[0] for r in results) == list(range(1, 51))


async def test_duplicates_across_and_within_commits(journal):
    first = await journal.append([message(1), message(2), message(1)])
    assert (first.accepted, first.duplicates) == (2, 1)
    again = await journal.append([message(2), message(3)])
    assert (again.accepted, again.duplicates) == (1, 1)
    counts = await journal.counts()
    assert counts["events"] == 3
    assert counts["counters"] == {"accepted": 3, "duplicates": 2, "rejected": 0}


async def test_one_pending_delivery_row_per_enabled_sink(journal):
    await journal.append([message(1), message(2)])
    got = rows(journal.path, "SELECT sink, event_id, state, attempts FROM deliveries ORDER BY sink, event_id")
    assert got == [
        ("airtable", 1, "pending", 0),
        ("airtable", 2, "pending", 0),
        ("postgres", 1, "pending", 0),
        ("postgres", 2, "pending", 0),
    ]
    counts = await journal.counts()
    assert counts["sinks"]["postgres"]["pending"] == 2
    assert counts["sinks"]["postgres"]["oldest_pending_at"] == "2026-11-25T00:00:00.000Z"


async def test_journal_only_has_no_delivery_rows(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", [])
    try:
        await journal.append([message(1)])
    finally:
        await journal.close()
    assert rows(tmp_path / "j.sqlite", "SELECT count(*) FROM deliveries") == [(0,)]


async def test_quarantine_keeps_reason_and_raw(journal):
    result = await journal.append([message(1)], [Rejected("element has no title", '{"a":1}', NOW)])
    assert (result.accepted, result.rejected) == (1, 1)
    assert rows(journal.path, "SELECT reason, raw FROM quarantine") == [("element has no title", '{"a":1}')]


async def test_event_row_holds_normalized_fields_and_raw(journal):
    event = normalize(
        {
            "title": "incoming_message",
            "service": "whatsapp",
            "bot": {"id": "b"},
            "contact": {"id": "c", "phone": "+55 11 98765-4321", "name": "Ana"},
            "date": 1713225600,
            "info": {
                "message": {
                    "id": "sp",
                    "channel_data": {"message": {"id": "wamid.1", "type": "text", "text": {"body": "oi"}}},
                }
            },
        },
        NOW,
    )
    await journal.append([event])
    (row,) = rows(
        journal.path,
        "SELECT dedup_key, received_at, occurred_at, title, service, bot_id, contact_id, "
        "phone, contact_name, message_id, platform_message_id, direction, message_type, "
        "text, raw FROM events",
    )
    assert row[:14] == (
        "msg:incoming_message:sp",
        "2026-11-25T00:00:00.000Z",
        "2024-04-16T00:00:00.000Z",
        "incoming_message",
        "whatsapp",
        "b",
        "c",
        "5511987654321",
        "Ana",
        "sp",
        "wamid.1",
        "inbound",
        "text",
        "oi",
    )
    assert row[14] == event.raw


async def test_settings_are_wal_and_full_sync(journal):
    assert rows(journal.path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(journal.path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_full_disk_fails_the_whole_group_and_recovers(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"], page_limit=40)
    try:
        accepted = 0
        with pytest.raises(JournalUnavailable, match="full"):
            for i in range(10_000):
                big = normalize({"title": "x", "i": i, "pad": "p" * 4000}, NOW)
                await journal.append([big])
                accepted += 1
        assert not journal.writable
        assert (await journal.counts())["events"] == accepted  # the failed group left nothing behind
        await journal.ping()  # the writer is alive even though the disk is full
        with pytest.raises(JournalUnavailable):
            await journal.append([normalize({"title": "x", "pad": "q" * 4000}, NOW)])
        await journal.set_page_limit(None)
        await journal.probe()
        assert journal.writable
        assert (await journal.append([message(1)])).accepted == 1
    finally:
        await journal.close()


async def test_reopen_keeps_everything_and_ids_keep_growing(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = await Journal.open(path, ["postgres"])
    await journal.append([message(1), message(2)])
    await journal.close()
    journal = await Journal.open(path, ["postgres"])
    try:
        assert (await journal.append([message(2)])).duplicates == 1
        (new_id,) = (await journal.append([message(3)])).event_ids
        assert new_id > 2
    finally:
        await journal.close()


async def test_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "j.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match=f"schema v{SCHEMA_VERSION + 1}, written by a newer chatledger"):
        await Journal.open(path, [])
    assert rows(path, "SELECT name FROM sqlite_master") == []


async def test_not_a_database(tmp_path):
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="not a usable SQLite database"):
        await Journal.open(path, [])


async def test_second_daemon_on_the_same_journal_is_refused(journal):
    with pytest.raises(JournalError, match="in use by another chatledger"):
        await Journal.open(journal.path, [])


async def test_close_commits_what_was_submitted_then_refuses(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", [])
    pending = [asyncio.ensure_future(journal.append([message(i)])) for i in range(5)]
    await asyncio.sleep(0)  # let the appends reach the queue
    await journal.close()
    assert [p.result().accepted for p in pending] == [1] * 5
    with pytest.raises(JournalUnavailable, match="closed"):
        await journal.append([message(9)])


async def test_listeners_hear_the_last_event_id(journal):
    heard = []
    journal.add_listener(heard.append)
    await journal.append([message(1), message(2)])
    await journal.append([message(1)])  # duplicate only: nothing new to hear
    assert heard == [2]


async def test_the_start_log_counts_events_not_the_highest_id(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = await Journal.open(path, [])
    await journal.append([message(i) for i in range(7)])
    await journal.close()
    with sqlite3.connect(path) as conn:  # as retention or `forget` leaves it: ids 1 to 7, 4 events
        conn.execute("DELETE FROM events WHERE id IN (2, 3, 5)")
    lines = []
    handler = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    try:
        journal = await Journal.open(path, [])
        await journal.close()
    finally:
        logger.remove(handler)
    (opened,) = [line for line in lines if " open (" in line]
    assert "4 events" in opened, opened
