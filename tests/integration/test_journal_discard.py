"""Discarding dead letters in a real journal: recorded (who, when, why) and listable, no longer counted as
dead, never re-queued by `replay --dead`; the v5 migration keeps every delivery row; journal check accepts
the new state."""

import sqlite3
from datetime import UTC, datetime

import pytest

from daemon.events import normalize
from daemon.journal import Journal, Requeue, check_journal, intake, read_dead_letters
from daemon.journal import schema as journal_schema
from tests.support import incoming

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def rows(path, sql, params=()):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
async def journal(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres", "airtable"])
    await journal.append([normalize(incoming(f"wamid.{i}"), NOW) for i in range(1, 4)])
    await journal.mark_dead("postgres", 1, "value out of range")
    await journal.mark_dead("postgres", 2, "constraint refused")
    await journal.mark_dead("airtable", 2, "duplicate key row")
    yield journal
    await journal.close()


async def test_a_discarded_dead_letter_is_recorded_listable_and_no_longer_dead(journal):
    before = (await journal.counts())["sinks"]["postgres"]
    assert (before["dead"], before["discarded"]) == (2, 0) and before["dead_last_at"]

    done = await journal.discard(["postgres"], "1", "fixed by hand in the database", "alice")
    assert [(d["sink"], d["event_id"], d["dedup_key"], d["last_error"]) for d in done.discarded] == [
        ("postgres", 1, "msg:incoming_message:wamid.1", "value out of range")
    ]
    assert (done.reason, done.by) == ("fixed by hand in the database", "alice") and done.at.endswith("Z")
    assert rows(journal.path, "SELECT state FROM deliveries WHERE sink = 'postgres' AND event_id = 1") == [
        ("discarded",)
    ]
    after = (await journal.counts())["sinks"]["postgres"]
    assert (after["dead"], after["discarded"]) == (1, 1)

    [open_letter] = read_dead_letters(journal.path, ["postgres"], 100)["postgres"]
    assert (open_letter["event_id"], open_letter["state"]) == (2, "dead")
    [kept] = read_dead_letters(journal.path, ["postgres"], 100, discarded=True)["postgres"]
    assert (kept["event_id"], kept["state"], kept["last_error"]) == (1, "discarded", "value out of range")
    assert (kept["reason"], kept["discarded_by"], kept["discarded_at"]) == (
        "fixed by hand in the database",
        "alice",
        done.at,
    )

    assert await journal.requeue("postgres", Requeue()) == 1  # replay --dead: the open one only
    assert rows(journal.path, "SELECT event_id, state FROM deliveries WHERE sink = 'postgres' ORDER BY 1") == [
        (1, "discarded"),
        (2, "pending"),
        (3, "pending"),
    ]
    assert await journal.requeue("postgres", Requeue(dead_only=False, since="2000-01-01T00:00:00.000Z")) == 0


async def test_discard_all_takes_every_open_dead_letter_of_the_sinks_named(journal):
    done = await journal.discard(["postgres", "airtable"], None, "known bad test data", "root")
    assert sorted((d["sink"], d["event_id"]) for d in done.discarded) == [
        ("airtable", 2),
        ("postgres", 1),
        ("postgres", 2),
    ]
    assert [c["dead"] for c in (await journal.counts())["sinks"].values()] == [0, 0]
    assert (await journal.discard(["postgres"], None, "again", "root")).discarded == []  # nothing left


async def test_an_unknown_event_or_one_that_is_not_dead_is_said_and_nothing_changes(journal):
    unknown = await journal.discard(["postgres"], "wamid.999", "typo", "root")
    assert (unknown.discarded, unknown.others, unknown.found) == ([], [], False)
    pending = await journal.discard(["postgres", "airtable"], "wamid.3", "not dead", "root")
    assert pending.discarded == [] and pending.found
    assert sorted((o["sink"], o["event_id"], o["state"]) for o in pending.others) == [
        ("airtable", 3, "pending"),
        ("postgres", 3, "pending"),
    ]
    by_key = await journal.discard(["airtable"], "msg:incoming_message:wamid.2", "by its dedup key", "root")
    assert [(d["sink"], d["event_id"]) for d in by_key.discarded] == [("airtable", 2)]
    assert rows(journal.path, "SELECT count(*) FROM discards")[0][0] == 1


async def test_replaying_the_event_by_name_undoes_a_discard_and_keeps_its_record(journal):
    await journal.discard(["postgres"], "1", "too hasty", "root")
    assert await journal.requeue("postgres", Requeue(dead_only=False, event="1")) == 1
    assert rows(journal.path, "SELECT state FROM deliveries WHERE sink = 'postgres' AND event_id = 1") == [("pending",)]
    assert rows(journal.path, "SELECT sink, event_id, reason FROM discards") == [("postgres", 1, "too hasty")]
    assert read_dead_letters(journal.path, ["postgres"], 100, discarded=True) == {"postgres": []}


async def test_a_letter_that_dies_later_moves_the_latest_death(journal):
    first = (await journal.counts())["sinks"]["postgres"]["dead_last_at"]
    await journal.mark_dead("postgres", 3, "refused too")
    assert (await journal.counts())["sinks"]["postgres"]["dead_last_at"] > first
    await journal.discard(["postgres"], None, "all of them", "root")
    assert (await journal.counts())["sinks"]["postgres"]["dead_last_at"] is None


async def test_journal_check_accepts_discarded_deliveries_and_repair_leaves_them(journal):
    await journal.discard(["postgres"], "1", "checked", "root")
    path = journal.path
    await journal.close()
    report = check_journal(path, ["postgres", "airtable"])
    assert report.problems == [] and report.states["postgres"] == {"discarded": 1, "dead": 1, "pending": 1}
    repaired = check_journal(path, ["postgres", "airtable"], repair=True)
    assert repaired.problems == [] and repaired.repaired == []
    assert repaired.states["postgres"]["discarded"] == 1


async def test_a_v4_journal_migrates_keeping_every_delivery_row(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite"
    with monkeypatch.context() as old:
        old.setattr(journal_schema, "MIGRATIONS", journal_schema.MIGRATIONS[:4])
        old.setattr(journal_schema, "SCHEMA_VERSION", 4)
        for statement in ("FAN_OUT", "FOLD", "ADD_ACCEPTED"):  # v4's triggers did their work (v10 moved it)
            old.setattr(intake, statement, "SELECT ?")
        v4 = await Journal.open(path, ["postgres", "airtable"])
        await v4.append([normalize(incoming(f"wamid.{i}"), NOW) for i in range(1, 5)])
        await v4.mark_delivered("postgres", [1, 2])
        await v4.mark_dead("airtable", 3, "refused")
        await v4.close()
    before = rows(path, "SELECT * FROM deliveries ORDER BY sink, event_id")
    assert rows(path, "PRAGMA user_version") == [(4,)]

    journal = await Journal.open(path, ["postgres", "airtable"])
    try:
        assert rows(path, "PRAGMA user_version") == [(journal_schema.SCHEMA_VERSION,)]
        assert rows(path, "SELECT * FROM deliveries ORDER BY sink, event_id") == before
        await journal.append([normalize(incoming("wamid.5"), NOW)])  # the fan-out trigger still works
        assert rows(path, "SELECT sink, state FROM deliveries WHERE event_id = 5 ORDER BY sink") == [
            ("airtable", "pending"),
            ("postgres", "pending"),
        ]
        assert [d["event_id"] for d in (await journal.discard(["airtable"], "3", "old", "root")).discarded] == [3]
        assert rows(path, "PRAGMA foreign_key_check") == [] and rows(path, "PRAGMA integrity_check") == [("ok",)]
    finally:
        await journal.close()


async def test_forgetting_a_person_erases_the_record_of_their_discarded_dead_letters(journal):
    await journal.discard(["postgres", "airtable"], None, "their messages broke the row", "root")
    assert rows(journal.path, "SELECT count(*) FROM discards")[0][0] == 3
    counts, _ = await journal.forget("5511987654321", [])  # incoming()'s phone: every planted event
    assert counts["events"] == 3
    assert rows(journal.path, "SELECT count(*) FROM discards")[0][0] == 0
