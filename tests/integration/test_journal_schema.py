"""The journal's shipped migrations stay as they shipped: their text, the v2 backfill's fold and the schema
they build are those captured from the release before the journal became a package (data/journal_schema.json,
written once by applying that code's MIGRATIONS; never regenerate it from the code it checks). And the
conversation fold intake runs (daemon.journal.intake FOLD restates rules of daemon.events and daemon.records in
SQL) counts messages and picks statuses as records does, and folds as the per-event trigger it replaced did."""

import json
import random
import sqlite3
from dataclasses import astuple
from pathlib import Path

from daemon.events import (
    API_CONVERSATION_UPDATE,
    API_ESCALATION,
    API_ESCALATION_UPDATE,
    API_INTERACTION,
    DELIVERY_STATUS,
    MESSAGE_TITLES,
    OWN_TITLES,
    TITLE_ALIASES,
    StoredEvent,
)
from daemon.journal import MIGRATIONS, Journal
from daemon.journal import schema as journal_schema
from daemon.journal.intake import FOLD
from daemon.journal.schema import EVENT_COLUMNS
from daemon.records import STATUS_AS_TITLE, STATUS_TITLES, conversation_id_for, map_events

GOLDEN = json.loads((Path(__file__).parent / "data" / "journal_schema.json").read_text())
SHIPPED = GOLDEN["schema_version"]
INSERT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"


def master(path):
    with sqlite3.connect(path) as conn:
        return [
            list(row) for row in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        ]


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


def cases():
    """Every title the journal may hold, each way the conversation rules tell apart: (title, message id,
    direction, raw body)."""
    yield from ((title, f"m-{title}", direction, {}) for title, direction in MESSAGE_TITLES.items())
    yield from ((title, None, None, {}) for title in STATUS_TITLES)
    yield API_INTERACTION, None, "outbound", {"id": "i1", "direction": "outbound", "content": "oi"}
    yield API_INTERACTION, "m9", "inbound", {"id": "i2", "direction": "inbound", "messageId": "m9", "intent": "x"}
    yield from ((API_CONVERSATION_UPDATE, None, None, {"status": status}) for status in STATUS_AS_TITLE)
    yield API_CONVERSATION_UPDATE, None, None, {"intent": "billing"}
    yield API_ESCALATION, None, None, {"id": "e1", "reason": "wants a person"}
    yield API_ESCALATION_UPDATE, None, None, {"id": "e1", "status": "resolved"}
    yield DELIVERY_STATUS, "m1", "outbound", {"of": "msg:outgoing_message:m1", "message_id": "m1", "status": "read"}
    yield from ((title, None, None, {}) for title in (*TITLE_ALIASES, "new_subscriber"))


async def test_the_fold_a_fresh_journal_runs_counts_messages_and_statuses_as_records_does(tmp_path):
    known = set(MESSAGE_TITLES) | STATUS_TITLES | OWN_TITLES
    assert {title for title, *_ in cases()} >= known  # a new title needs its case here
    path = tmp_path / "j.sqlite"
    journal = await Journal.open(path, ["postgres"])
    await journal.close()
    expected, folded = {}, {}
    with sqlite3.connect(path) as conn:
        for n, (title, message_id, direction, body) in enumerate(cases(), 1):
            conversation_id = conversation_id_for("bot1", f"c{n}", None)
            event = StoredEvent(
                n,
                f"k{n}",
                "2026-11-25T12:00:00.000Z",
                "2026-11-25T12:00:00.000Z",
                title,
                "whatsapp",
                "bot1",
                f"c{n}",
                "5511987654321",
                "Ana",
                message_id,
                None,
                direction,
                None,
                "oi",
                json.dumps(body),
                conversation_id,
            )
            conn.execute(INSERT, astuple(event)[1:])
            conn.execute(FOLD, (conn.execute("SELECT last_insert_rowid()").fetchone()[0],))  # as intake folds it
            records = map_events([event])
            # a new interaction: neither a reported status nor the bot's enrichment of a SendPulse message
            messages = sum(1 for row in records.interactions if row.message_key is None and not row.reported)
            status = records.status_changes[0].title if records.status_changes else None
            expected[title, json.dumps(body)] = (messages, status)
            [row] = conn.execute(
                "SELECT message_count, status_title FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchall()
            folded[title, json.dumps(body)] = row
    assert folded == expected
    # not vacuous: what counts is a message, or an interaction the bot posts naming no SendPulse message
    counted = {title for (title, _), (count, _) in folded.items() if count}
    assert counted == set(MESSAGE_TITLES) | {API_INTERACTION} and DELIVERY_STATUS not in counted


def random_events(count, seed):
    """Events of a few conversations, every title the fold tells apart, ties in time, details now and then missing."""
    rng = random.Random(seed)
    titles = [
        "incoming_message",
        "outgoing_message",
        "open_chat",
        "unsubscribe",
        "bot_block",
        API_INTERACTION,
        API_CONVERSATION_UPDATE,
        DELIVERY_STATUS,
        "new_subscriber",
    ]
    for n in range(1, count + 1):
        title = rng.choice(titles)
        contact = f"c{rng.randrange(6)}"
        body = {"status": rng.choice(["escalated", "closed", "active", "other"])} if rng.random() < 0.8 else {}
        yield StoredEvent(
            n,
            f"k{rng.randrange(10**9)}-{n}",
            "2026-11-25T12:00:00.000Z",
            f"2026-11-25T12:00:{rng.randrange(20):02d}.000Z",
            title,
            rng.choice(["whatsapp", None]),
            rng.choice(["bot1", None]),
            contact,
            rng.choice(["5511987654321", "5511900000000", None]),
            rng.choice(["Ana", "Bia", None]),
            rng.choice([f"m{n}", None]),
            None,
            MESSAGE_TITLES.get(title),
            None,
            "oi",
            json.dumps(body),
            conversation_id_for("bot1", contact, None),
        )


async def test_the_fold_per_group_gives_what_the_per_event_trigger_it_replaced_gave(tmp_path, monkeypatch):
    with monkeypatch.context() as v9:  # the last schema whose trigger folded each event as it was inserted
        v9.setattr(journal_schema, "MIGRATIONS", MIGRATIONS[:9])
        v9.setattr(journal_schema, "SCHEMA_VERSION", 9)
        await (await Journal.open(tmp_path / "v9.sqlite", [])).close()
    await (await Journal.open(tmp_path / "now.sqlite", [])).close()
    events = [astuple(event)[1:] for event in random_events(400, seed=16)]
    rng = random.Random(16)
    folded = {}
    for name in ("v9", "now"):
        with sqlite3.connect(tmp_path / f"{name}.sqlite") as conn:
            position = 0
            while position < len(events):
                group = events[position : position + rng.randint(1, 40)]
                conn.executemany(INSERT, group)
                if name == "now":
                    conn.execute(FOLD, (position + 1,))
                position += len(group)
            folded[name] = [row[:-1] for row in conn.execute("SELECT * FROM conversations ORDER BY conversation_id")]
    assert folded["now"] == folded["v9"]
    assert len(folded["now"]) == 6 and sum(row[11] for row in folded["now"]) > 100  # not vacuous
