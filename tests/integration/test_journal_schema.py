"""The journal's shipped migrations stay as they shipped: their text, the v2 backfill's fold and the schema
they build are those captured from the release before the journal became a package (data/journal_schema.json,
written once by applying that code's MIGRATIONS; never regenerate it from the code it checks)."""

import json
import sqlite3
from pathlib import Path

from daemon.journal import MIGRATIONS, Journal
from daemon.journal import schema as journal_schema

GOLDEN = json.loads((Path(__file__).parent / "data" / "journal_schema.json").read_text())
SHIPPED = GOLDEN["schema_version"]


def master(path):
    with sqlite3.connect(path) as conn:
        return [list(row) for row in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")]


def test_every_shipped_migration_is_the_text_that_shipped():
    assert len(GOLDEN["migrations"]) == SHIPPED <= len(MIGRATIONS)
    for version, (now, shipped) in enumerate(zip(MIGRATIONS, GOLDEN["migrations"]), 1):
        assert now == shipped, f"migration v{version} was edited after it shipped: append a new one instead"


def test_the_v2_backfill_folds_conversations_as_it_shipped():
    assert journal_schema.REBUILD_CONVERSATIONS == GOLDEN["rebuild_conversations"]


async def test_a_fresh_journal_migrated_to_the_shipped_version_has_the_shipped_schema(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_schema, "MIGRATIONS", MIGRATIONS[:SHIPPED])  # later migrations change it
    monkeypatch.setattr(journal_schema, "SCHEMA_VERSION", SHIPPED)
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    await journal.close()
    assert master(tmp_path / "j.sqlite") == GOLDEN["sqlite_master_opened"]
