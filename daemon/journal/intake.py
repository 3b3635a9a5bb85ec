"""What intake writes inside a group commit: the events (deduplicated), the quarantined elements, and the
duplicates counted. The triggers skip a message whose wamid the journal holds for its title, fan each event
out to the sinks' delivery rows and fold it into its conversation (daemon.journal.schema)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiosqlite

from daemon.events import Event, Rejected
from daemon.journal.schema import EVENT_COLUMNS
from daemon.records import conversation_id_for, iso

INSERT_COLUMNS = (*EVENT_COLUMNS, "original")
# One multi-row statement per chunk: a single trip to the SQLite thread however many events.
ROWS_PER_INSERT = 32766 // len(INSERT_COLUMNS) // 100 * 100  # SQLite's bound-variable limit
_ROW = "(" + ", ".join("?" * len(INSERT_COLUMNS)) + ")"


def insert_events_sql(rows: int) -> str:
    return (
        f"INSERT INTO events ({', '.join(INSERT_COLUMNS)}) VALUES {', '.join([_ROW] * rows)} "
        "ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key"
    )


INSERT_QUARANTINE = "INSERT INTO quarantine (received_at, reason, raw) VALUES (?, ?, ?)"
ADD_DUPLICATES = "UPDATE counters SET value = value + ? WHERE name = 'duplicates'"


async def write_intake(conn: aiosqlite.Connection, events: Sequence[Event],
                       rejected: Sequence[Rejected]) -> list[tuple[int, str]]:
    """Insert the events new to the journal and quarantine the rejected; (id, dedup key) of each new event, by id."""
    stamps: dict[datetime, str] = {}  # a request's events share one receive time
    rows = [_event_row(event, stamps) for event in events]
    quarantined = [(iso(item.received_at), _sql_text(item.reason), _sql_text(item.raw)) for item in rejected]
    new_ids: list[tuple[int, str]] = []
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        params = [value for row in chunk for value in row]
        new_ids.extend(await conn.execute_fetchall(insert_events_sql(len(chunk)), params))
    if quarantined:
        await conn.executemany(INSERT_QUARANTINE, quarantined)
    if len(events) > len(new_ids):  # a known key or wamid; accepted and rejected are counted by triggers
        await conn.execute(ADD_DUPLICATES, (len(events) - len(new_ids),))
    new_ids.sort()
    return [(event_id, key) for event_id, key in new_ids]


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
