"""The journal's own record of each conversation: exact counts, any order, and built for old journals."""

import itertools
import sqlite3
from datetime import UTC, datetime

from daemon.events import normalize
from daemon.journal import MIGRATIONS, Journal
from daemon.journal.schema import statements
from daemon.records import conversation_id_for

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T0 = 1_790_000_000


def event(title, mid=None, contact="c1", at=0, name="Ana", phone="5511987654321"):
    element = {
        "title": title,
        "service": "whatsapp",
        "bot": {"id": "bot1"},
        "date": T0 + at,
        "contact": {"id": contact, "phone": phone, "name": name},
    }
    if mid:
        element["info"] = {"message": {"id": mid, "channel_data": {"message": {"text": {"body": "x"}}}}}
    return element


PAYLOADS = [
    event("incoming_message", "m1", at=10, name="old"),
    event("outgoing_message", "m2", at=20),
    event("unsubscribe", at=25),
    event("incoming_message", "m3", at=5, name="newest?", phone="1"),
    event("open_chat", at=15),
    event("incoming_message", "m4", at=30, name="new"),
]
C1 = conversation_id_for("bot1", "c1", None)


async def state_after(tmp_path, name, payloads):
    journal = await Journal.open(tmp_path / name, [])
    try:
        for payload in payloads:
            await journal.append([normalize(payload, RECEIVED)])
        return await journal.conversations([C1, "unknown"])
    finally:
        await journal.close()


def summary(state):
    return (
        state.message_count,
        state.started_at,
        state.last_activity,
        state.status,
        state.name,
        state.phone,
        state.status_title,
    )


async def test_counts_and_spans_are_exact_and_duplicates_do_not_count(tmp_path):
    found = await state_after(tmp_path, "a.sqlite", PAYLOADS + PAYLOADS[:3])
    assert list(found) == [C1]
    c1 = found[C1]
    assert c1.message_count == 4
    assert c1.started_at == "2026-09-21T14:13:25.000Z" and c1.last_activity == "2026-09-21T14:13:50.000Z"
    # the latest status event is the unsubscribe (at 25); a message came after it (at 30): active
    assert (c1.status_title, c1.status) == ("unsubscribe", "active")
    assert (c1.name, c1.phone) == ("new", "5511987654321")  # contact details follow the newest event


async def test_any_arrival_order_gives_the_same_record(tmp_path):
    expected = summary((await state_after(tmp_path, "ref.sqlite", PAYLOADS))[C1])
    for n, order in enumerate(itertools.islice(itertools.permutations(PAYLOADS), 0, 720, 97)):
        assert summary((await state_after(tmp_path, f"p{n}.sqlite", list(order)))[C1]) == expected


async def test_a_v1_journal_gets_its_conversations_on_upgrade(tmp_path):
    path = tmp_path / "old.sqlite"
    current = await state_after(tmp_path, "new.sqlite", PAYLOADS)
    # write a v1 journal by hand, as the previous release did
    conn = sqlite3.connect(path)
    for statement in statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    journal = await Journal.open(path, [])
    try:
        await journal.append([normalize(p, RECEIVED) for p in PAYLOADS[:3]])
    finally:
        await journal.close()
    # simulate v1 rows: undo what v2 to v10 did, then downgrade the version number
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER events_wamid_once")
    (fan_out,) = [sql for sql in statements(MIGRATIONS[0]) if "CREATE TRIGGER events_fan_out" in sql]
    conn.execute(fan_out)  # v10 dropped it
    conn.execute("DROP INDEX events_status_reports")
    conn.execute("DROP INDEX events_platform_message_id")
    conn.execute("DROP INDEX quarantine_open")
    for column in ("discarded_at", "discarded_by", "discard_reason"):
        conn.execute(f"ALTER TABLE quarantine DROP COLUMN {column}")
    conn.execute("DROP TABLE discards")
    conn.execute("ALTER TABLE events DROP COLUMN original")
    conn.execute("DROP TABLE audit")
    conn.execute("DELETE FROM meta WHERE key = 'audit_salt'")
    conn.execute("UPDATE events SET conversation_id = NULL")
    conn.execute("DELETE FROM conversations")
    conn.execute("DROP TABLE conversations")
    conn.execute("DROP INDEX events_conversation")
    conn.execute("ALTER TABLE events DROP COLUMN conversation_id")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    upgraded = await state_after(tmp_path, "old.sqlite", PAYLOADS[3:])
    assert summary(upgraded[C1]) == summary(current[C1])


async def test_the_outbound_message_variant_is_a_message_like_outgoing_message(tmp_path):
    from daemon.records import map_events

    variant = event("outbound_message", "m9", at=40)
    found = await state_after(tmp_path, "v.sqlite", [*PAYLOADS, variant])
    assert found[C1].message_count == 5  # counted by the journal's fold
    journal = await Journal.open(tmp_path / "w.sqlite", ["postgres"])
    try:
        result = await journal.append([normalize(variant, RECEIVED)])
        again = await journal.append([normalize({**variant, "title": "outgoing_message"}, RECEIVED)])
        assert (result.accepted, again.duplicates) == (1, 1)  # one message, whichever title it came under
        records = map_events(await journal.pending("postgres", 0, 10))
        assert [(i.message_id, i.direction) for i in records.interactions] == [("m9", "outbound")]
    finally:
        await journal.close()
