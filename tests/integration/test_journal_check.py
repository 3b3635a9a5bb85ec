"""`chatledger journal check`: a planted orphan and a missing delivery row are found, then repaired."""

import sqlite3
from datetime import UTC, datetime

import pytest

from daemon.events import normalize
from daemon.journal import Journal, JournalError, check_journal
from tests.support import incoming

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
async def path(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    await journal.append([normalize(incoming(f"m{i}"), NOW) for i in range(5)])
    await journal.close()
    return tmp_path / "j.sqlite"


def plant(path):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("INSERT INTO deliveries (sink, event_id, state) VALUES ('postgres', 999, 'pending')")
    conn.execute("DELETE FROM deliveries WHERE event_id = 2")
    conn.commit()
    conn.close()


async def test_a_clean_journal_has_no_problems(path):
    report = check_journal(path, ["postgres"])
    assert report.problems == [] and report.integrity == ["ok"]
    assert report.events == 5 and report.states == {"postgres": {"pending": 5}}


async def test_orphans_and_missing_rows_are_found_and_repaired(path):
    plant(path)
    report = check_journal(path, ["postgres", "airtable"])
    assert "1 postgres delivery rows have no event" in report.problems
    assert "1 events have no postgres delivery row" in report.problems
    assert "5 events have no airtable delivery row" in report.problems  # a sink enabled since
    repaired = check_journal(path, ["postgres", "airtable"], repair=True)
    assert repaired.repaired == [
        "1 missing postgres delivery rows added as pending",
        "5 missing airtable delivery rows added as pending",
        "1 delivery rows without an event removed",
    ]
    assert repaired.problems == []
    assert repaired.states == {"airtable": {"pending": 5}, "postgres": {"pending": 5}}


async def test_repair_is_refused_while_the_journal_is_in_use(path):
    journal = await Journal.open(path, ["postgres"])
    try:
        assert check_journal(path, ["postgres"]).problems == []  # checking is fine beside it
        with pytest.raises(JournalError, match="in use"):
            check_journal(path, ["postgres"], repair=True)
    finally:
        await journal.close()
