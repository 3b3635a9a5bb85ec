"""What intake writes inside a group commit: the events (deduplicated; a trigger skips a message whose wamid
the journal holds for its title), their delivery rows for every enabled sink, their conversations' record,
the quarantined elements, and the counters. One statement of each per group, in the insert's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import aiosqlite

from daemon.events import Event, Rejected
from daemon.journal.schema import EVENT_COLUMNS
from daemon.records import conversation_id_for, iso

INSERT_COLUMNS = (*EVENT_COLUMNS, "original")
# One multi-row statement per chunk: a single trip to the SQLite thread however many events.
ROWS_PER_INSERT = 32766 // len(INSERT_COLUMNS) // 100 * 100  # SQLite's bound-variable limit
_ROW = "(" + ", ".join("?" * len(INSERT_COLUMNS)) + ")"
T = TypeVar("T")


def insert_events_sql(rows: int) -> str:
    return (
        f"INSERT INTO events ({', '.join(INSERT_COLUMNS)}) VALUES {', '.join([_ROW] * rows)} "
        "ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key"
    )


INSERT_QUARANTINE = "INSERT INTO quarantine (received_at, reason, raw) VALUES (?, ?, ?)"
ADD_DUPLICATES = "UPDATE counters SET value = value + ? WHERE name = 'duplicates'"
ADD_ACCEPTED = "UPDATE counters SET value = value + ? WHERE name = 'accepted'"
# No event exists without a delivery row per enabled sink: they are written in the insert's transaction.
FAN_OUT = """
INSERT INTO deliveries (sink, event_id, state, attempts, next_attempt_at, updated_at)
SELECT s.name, e.id, 'pending', 0, 0, (julianday('now') - 2440587.5) * 86400.0
FROM events e CROSS JOIN sinks s WHERE e.id >= ?
"""
# The conversation fold, event by event in id order (each event is inserted once: counting is exact). It
# restates rules of daemon.events (MESSAGE_TITLES) and daemon.records (STATUS_TITLES, STATUS_AS_TITLE):
# an event counts as a message when its title is a message's, or it is an interaction the bot posted naming
# no SendPulse message (whose webhook counts it); the latest status event (or conversation PATCH with a
# status) by (time, dedup key) sets the status; contact details follow the newest event that has them.
# tests/integration/test_journal_schema.py checks it against records, and against the v3 trigger it replaced.
FOLD = """
INSERT INTO conversations (conversation_id, bot_id, contact_id, service, phone, name, contact_at,
    first_event_at, last_event_at, first_message_at, last_message_at, message_count,
    status_title, status_at, status_key, updated_at)
SELECT conversation_id, bot_id, contact_id, service, phone, contact_name, occurred_at, occurred_at, occurred_at,
    CASE WHEN is_message THEN occurred_at END, CASE WHEN is_message THEN occurred_at END, is_message,
    status_title, CASE WHEN status_title IS NOT NULL THEN occurred_at END,
    CASE WHEN status_title IS NOT NULL THEN occurred_at || '|' || dedup_key END,
    strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
FROM (
    SELECT id, conversation_id, bot_id, contact_id, service, phone, contact_name, occurred_at, dedup_key,
        title IN ('incoming_message', 'outgoing_message') OR (title = 'api_interaction' AND message_id IS NULL)
            AS is_message,
        CASE WHEN title IN ('open_chat', 'unsubscribe', 'bot_block') THEN title
             WHEN title = 'api_conversation_update' THEN CASE json_extract(raw, '$.status')
                 WHEN 'escalated' THEN 'open_chat' WHEN 'closed' THEN 'unsubscribe' WHEN 'active' THEN 'api_active' END
        END AS status_title
    FROM events WHERE id >= ? AND conversation_id IS NOT NULL
)
WHERE true ORDER BY id
ON CONFLICT (conversation_id) DO UPDATE SET
    bot_id           = coalesce(bot_id, excluded.bot_id),
    contact_id       = coalesce(contact_id, excluded.contact_id),
    service          = coalesce(service, excluded.service),
    phone            = CASE WHEN excluded.contact_at >= contact_at THEN coalesce(excluded.phone, phone)
                            ELSE coalesce(phone, excluded.phone) END,
    name             = CASE WHEN excluded.contact_at >= contact_at THEN coalesce(excluded.name, name)
                            ELSE coalesce(name, excluded.name) END,
    contact_at       = max(contact_at, excluded.contact_at),
    first_event_at   = min(first_event_at, excluded.first_event_at),
    last_event_at    = max(last_event_at, excluded.last_event_at),
    first_message_at = coalesce(min(first_message_at, excluded.first_message_at),
                                first_message_at, excluded.first_message_at),
    last_message_at  = coalesce(max(last_message_at, excluded.last_message_at),
                                last_message_at, excluded.last_message_at),
    message_count    = message_count + excluded.message_count,
    status_title     = CASE WHEN excluded.status_key > coalesce(status_key, '')
                            THEN excluded.status_title ELSE status_title END,
    status_at        = CASE WHEN excluded.status_key > coalesce(status_key, '')
                            THEN excluded.status_at ELSE status_at END,
    status_key       = max(coalesce(status_key, ''), coalesce(excluded.status_key, '')),
    updated_at       = excluded.updated_at
"""


async def write_intake(
    conn: aiosqlite.Connection, events: Sequence[Event], rejected: Sequence[Rejected], commit: bool = False
) -> list[tuple[int, str]]:
    """Insert the events new to the journal and quarantine the rejected, then commit if asked, all in one trip
    to the SQLite thread; (id, dedup key) of each new event, by id."""
    stamps: dict[datetime, str] = {}  # a request's events share one receive time
    rows = [_event_row(event, stamps) for event in events]
    quarantined = [(iso(item.received_at), _sql_text(item.reason), _sql_text(item.raw)) for item in rejected]
    if not (rows or quarantined or commit):
        return []
    return await in_thread(conn, _write, rows, quarantined, commit)


def _write(
    db: sqlite3.Connection, rows: list[tuple[Any, ...]], quarantined: list[tuple[str, str, str]], commit: bool
) -> list[tuple[int, str]]:
    new_ids: list[tuple[int, str]] = []
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        params = [value for row in chunk for value in row]
        new_ids.extend(db.execute(insert_events_sql(len(chunk)), params).fetchall())
    if new_ids:
        first = min(event_id for event_id, _ in new_ids)  # ids only grow: this statement's events are those from it
        db.execute(FAN_OUT, (first,))
        db.execute(FOLD, (first,))
        db.execute(ADD_ACCEPTED, (len(new_ids),))
    if quarantined:
        db.executemany(INSERT_QUARANTINE, quarantined)  # counted by a trigger
    if len(rows) > len(new_ids):  # a known key or wamid
        db.execute(ADD_DUPLICATES, (len(rows) - len(new_ids),))
    if commit:
        db.commit()  # the fsync (WAL, synchronous=FULL)
    new_ids.sort()
    return new_ids


async def in_thread(conn: aiosqlite.Connection, work: Callable[..., T], *args: Any) -> T:
    """`work(the sqlite3 connection, *args)` on the connection's own thread: many statements, one round trip
    (each aiosqlite call is one, some 50 µs). aiosqlite has no public way to do it: its `_execute` is what
    its own methods use (tests/integration/test_journal*.py run every intake through it)."""
    execute: Callable[[Callable[[], T]], Awaitable[T]] = conn._execute  # untyped in aiosqlite
    return await execute(lambda: work(conn._conn, *args))


def _event_row(event: Event, stamps: dict[datetime, str]) -> tuple[Any, ...]:
    received = stamps.get(event.received_at)
    if received is None:
        received = stamps[event.received_at] = iso(event.received_at)
    occurred = received if event.occurred_at is event.received_at else iso(event.occurred_at)
    return (
        event.dedup_key,
        received,
        occurred,
        event.title,
        event.service,
        event.bot_id,
        event.contact_id,
        event.phone,
        event.contact_name,
        event.message_id,
        event.platform_message_id,
        event.direction,
        event.message_type,
        event.text,
        event.raw,
        event.conversation_id or conversation_id_for(event.bot_id, event.contact_id, event.phone),
        event.original,
    )


def _sql_text(text: str) -> str:
    """Text SQLite takes: a lone surrogate (only our own bugs can bring one here) backslash-escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
