"""The quarantine in a real journal: listed with reasons and previews, discarded with a record of who, when
and why (hidden from the list and the open count, never deleted), read without a daemon, migrated from v5,
and still erased by `forget` when it names the phone."""

import sqlite3
from datetime import UTC, datetime

import pytest

from daemon.events import Rejected, normalize
from daemon.journal import COUNT_QUARANTINE, Journal
from daemon.journal import schema as journal_schema
from daemon.quarantine import PREVIEW_CHARS, discard_quarantined, list_quarantine, preview, read_quarantine
from tests.support import incoming

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LONG = '{"title": "", "text": "' + "x" * 500 + '"}'
ELEMENTS = [
    ("element is a number, not an object", "42"),
    ("element has no title", '{"contact": {"phone": "+55 11 98888-7777"}, "text": "oi\x1b[2J\\u0000"}'),
    ("title is empty", LONG),
]


def rows(path, sql, params=()):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
async def journal(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    await journal.append(
        [normalize(incoming("wamid.1"), RECEIVED)], [Rejected(reason, raw, RECEIVED) for reason, raw in ELEMENTS]
    )
    yield journal
    await journal.close()


def test_a_preview_escapes_control_characters_and_cuts_long_text():
    assert preview("oi\x1b[2J\r\n\x00\x9b\u2028 ok") == "oi\\x1b[2J\\r\\n\\x00\\x9b\\u2028 ok"
    cut = preview("é" * 1000)
    assert cut.startswith("é" * 10) and cut.endswith("… (1000 characters)") and len(cut) < PREVIEW_CHARS + 30
    assert preview("x" * PREVIEW_CHARS) == "x" * PREVIEW_CHARS  # what fits is whole


async def test_the_open_elements_are_listed_with_id_reason_time_and_preview(journal):
    listed = await list_quarantine(journal, limit=100)
    assert (listed["open"], listed["discarded"]) == (3, 0)
    assert [(e["id"], e["reason"], e["received_at"]) for e in listed["elements"]] == [
        (1, "element is a number, not an object", "2026-11-25T12:00:00.000Z"),
        (2, "element has no title", "2026-11-25T12:00:00.000Z"),
        (3, "title is empty", "2026-11-25T12:00:00.000Z"),
    ]
    second = listed["elements"][1]
    assert "\x1b" not in second["preview"] and "oi\\x1b[2J" in second["preview"]
    assert listed["elements"][2]["preview"].endswith(f"({len(LONG)} characters)")
    assert listed["elements"][2]["length"] == len(LONG) and "raw" not in listed["elements"][2]
    whole = await list_quarantine(journal, limit=1, whole=True)
    assert [e["raw"] for e in whole["elements"]] == ["42"] and whole["open"] == 3  # the limit cuts the list only
    assert read_quarantine(journal.path, limit=100) == listed  # without the daemon: the same


async def test_a_discarded_element_is_recorded_hidden_and_no_longer_counted(journal):
    done = await discard_quarantined(journal, 2, "a test from the integrator, no customer", "alice")
    assert (done["discarded"], done["found"], done["by"]) == ([2], True, "alice") and done["at"].endswith("Z")
    assert rows(journal.path, "SELECT discarded_at, discarded_by, discard_reason FROM quarantine WHERE id = 2") == [
        (done["at"], "alice", "a test from the integrator, no customer")
    ]
    assert rows(journal.path, "SELECT count(*) FROM quarantine") == [(3,)]  # kept, not deleted

    assert (await journal.counts())["quarantined"] == 2
    assert (await journal.counts())["quarantine_discarded"] == 1
    listed = await list_quarantine(journal, limit=100)
    assert [e["id"] for e in listed["elements"]] == [1, 3] and (listed["open"], listed["discarded"]) == (2, 1)
    [kept] = (await list_quarantine(journal, limit=100, discarded=True))["elements"]
    assert (kept["id"], kept["discarded_at"], kept["discarded_by"], kept["discard_reason"]) == (
        2,
        done["at"],
        "alice",
        "a test from the integrator, no customer",
    )
    assert read_quarantine(journal.path, limit=100, discarded=True)["elements"] == [kept]

    again = await discard_quarantined(journal, 2, "twice", "bob")
    assert (
        again["discarded"] == []
        and again["found"]
        and again["already"] == {"at": done["at"], "by": "alice", "reason": "a test from the integrator, no customer"}
    )
    unknown = await discard_quarantined(journal, 99, "typo", "bob")
    assert (unknown["discarded"], unknown["found"]) == ([], False)
    assert rows(journal.path, "SELECT discarded_by FROM quarantine WHERE id = 2") == [("alice",)]  # unchanged


async def test_discarding_all_takes_every_open_element_and_then_there_is_none(journal):
    await discard_quarantined(journal, 1, "seen", "alice")
    done = await discard_quarantined(journal, None, "all checked by hand", "root")
    assert done["discarded"] == [2, 3]
    assert rows(journal.path, "SELECT id, discarded_by FROM quarantine ORDER BY id") == [
        (1, "alice"),
        (2, "root"),
        (3, "root"),
    ]
    assert (await journal.counts())["quarantined"] == 0
    assert (await discard_quarantined(journal, None, "again", "root"))["discarded"] == []


async def test_forget_still_erases_quarantined_elements_naming_the_phone_discarded_or_not(journal):
    await discard_quarantined(journal, 2, "seen", "alice")
    counts, _ = await journal.forget("5511988887777", [])
    assert counts["quarantined"] == 1
    assert rows(journal.path, "SELECT id FROM quarantine ORDER BY id") == [(1,), (3,)]


async def test_a_v5_journal_migrates_with_every_element_open_and_is_read_before_it_is(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite"
    with monkeypatch.context() as old:
        old.setattr(journal_schema, "MIGRATIONS", journal_schema.MIGRATIONS[:5])
        old.setattr(journal_schema, "SCHEMA_VERSION", 5)
        v5 = await Journal.open(path, [])
        await v5.append([], [Rejected(reason, raw, RECEIVED) for reason, raw in ELEMENTS])
        await v5.close()
    before = rows(path, "SELECT id, received_at, reason, raw FROM quarantine ORDER BY id")
    unmigrated = read_quarantine(path, limit=100)  # a daemon not restarted since the upgrade
    assert (unmigrated["open"], unmigrated["discarded"]) == (3, 0) and len(unmigrated["elements"]) == 3
    assert read_quarantine(path, limit=100, discarded=True)["elements"] == []

    journal = await Journal.open(path, [])
    try:
        assert rows(path, "PRAGMA user_version") == [(journal_schema.SCHEMA_VERSION,)]
        assert rows(path, "SELECT id, received_at, reason, raw FROM quarantine ORDER BY id") == before
        assert (await journal.counts())["quarantined"] == 3
        assert await list_quarantine(journal, limit=100) == unmigrated
        assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    finally:
        await journal.close()


async def test_the_open_count_reads_the_index_not_the_elements(journal):
    plan = " ".join(str(r) for r in rows(journal.path, "EXPLAIN QUERY PLAN " + COUNT_QUARANTINE))
    assert "COVERING INDEX quarantine_open" in plan
