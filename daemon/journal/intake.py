"""What intake writes inside a group commit: the events (deduplicated), the quarantined elements, and the
duplicates counted. The triggers skip a message whose wamid the journal holds for its title, fan each event
out to the sinks' delivery rows and fold it into its conversation (daemon.journal.schema)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

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


async def write_intake(conn: aiosqlite.Connection, events: Sequence[Event], rejected: Sequence[Rejected],
                       commit: bool = False) -> list[tuple[int, str]]:
    """Insert the events new to the journal and quarantine the rejected, then commit if asked, all in one trip
    to the SQLite thread; (id, dedup key) of each new event, by id."""
    stamps: dict[datetime, str] = {}  # a request's events share one receive time
    rows = [_event_row(event, stamps) for event in events]
    quarantined = [(iso(item.received_at), _sql_text(item.reason), _sql_text(item.raw)) for item in rejected]
    if not (rows or quarantined or commit):
        return []
    return await in_thread(conn, _write, rows, quarantined, commit)


def _write(db: sqlite3.Connection, rows: list[tuple[Any, ...]], quarantined: list[tuple[str, str, str]],
           commit: bool) -> list[tuple[int, str]]:
    new_ids: list[tuple[int, str]] = []
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        params = [value for row in chunk for value in row]
        new_ids.extend(db.execute(insert_events_sql(len(chunk)), params).fetchall())
    if quarantined:
        db.executemany(INSERT_QUARANTINE, quarantined)
    if len(rows) > len(new_ids):  # a known key or wamid; accepted and rejected are counted by triggers
        db.execute(ADD_DUPLICATES, (len(rows) - len(new_ids),))
    if commit:
        db.commit()  # the fsync (WAL, synchronous=FULL)
    new_ids.sort()
    return new_ids


async def in_thread(conn: aiosqlite.Connection, work: Callable[..., T], *args: Any) -> T:
    """`work(the sqlite3 connection, *args)` on the connection's own thread: many statements, one round trip
    (each aiosqlite call is one, some 50 µs). aiosqlite has no public way to do it: its `_execute` is what
    its own methods use (tests/integration/test_journal*.py run every intake through it)."""
    return cast(T, await conn._execute(lambda: work(conn._conn, *args)))


def _event_row(event: Event, stamps: dict[datetime, str]) -> tuple[Any, ...]:
    received = stamps.get(event.received_at)
    if received is None:
        received = stamps[event.received_at] = iso(event.received_at)
    occurred = received if event.occurred_at is event.received_at else iso(event.occurred_at)
    return (
        event.dedup_key, received, occurred, event.title, event.service,
        event.bot_id, event.contact_id, event.phone, event.contact_name, event.message_id,
        event.platform_message_id, event.direction, event.message_type, event.text, event.raw,
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
