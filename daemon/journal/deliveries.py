"""Per-sink delivery state: each event's row per sink (pending, delivered, dead, discarded), what the
delivery workers read and mark, what `replay`, `dead --discard` and retention change."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from daemon.events import StoredEvent
from daemon.journal.base import Writes
from daemon.journal.schema import EVENT_COLUMNS
from daemon.records import iso

DELIVERY_STATES = ("pending", "delivered", "dead", "discarded")
PENDING_PAGE = f"""
SELECT e.id, {", ".join("e." + c for c in EVENT_COLUMNS)}
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink = ? AND d.state = 'pending' AND d.event_id > ?
ORDER BY d.event_id LIMIT ?
"""
MARK_DELIVERED = """
UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_error = NULL, updated_at = ?
WHERE sink = ? AND event_id = ? AND state = 'pending'
"""
MARK_DEAD = """
UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_error = ?, updated_at = ?
WHERE sink = ? AND event_id = ? AND state = 'pending'
"""
NOTE_FAILURE = """
UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, updated_at = ?
WHERE sink = ? AND event_id = ? AND state = 'pending'
"""
# An event may go once every enabled sink holds it and nothing about it is pending or dead.
PURGE_EVENTS = """
DELETE FROM events WHERE id IN (
    SELECT e.id FROM events e
    WHERE e.received_at < ?
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state != 'delivered')
      AND (SELECT count(*) FROM deliveries d
           WHERE d.event_id = e.id AND d.state = 'delivered' AND d.sink IN ({sinks})) = {n}
    ORDER BY e.id LIMIT ?
)
"""
REQUEUE = """
UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = 0, last_error = NULL, updated_at = ?
WHERE sink = ? AND state IN ({states})
  AND (? IS NULL OR event_id IN (SELECT id FROM events WHERE received_at >= ?))
  AND (? IS NULL OR event_id IN (SELECT id FROM events WHERE CAST(id AS TEXT) = ? OR dedup_key = ?
                                                            OR message_id = ?))
"""
# `replay --since/--event` also selects events that have no row for the sink (journaled before it was
# enabled): they get one, pending.
REQUEUE_MISSING = """
INSERT INTO deliveries (sink, event_id, state, attempts, next_attempt_at, updated_at)
SELECT ?, e.id, 'pending', 0, 0, ? FROM events e
WHERE (? IS NULL OR e.received_at >= ?)
  AND (? IS NULL OR CAST(e.id AS TEXT) = ? OR e.dedup_key = ? OR e.message_id = ?)
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
"""
# Events journaled before a sink was enabled have no row for it (the insert fans out to the sinks
# enabled then): daemon.backfill makes them pending, a page of ids at a time.
# One statement, one snapshot: an intake committed between two would add an event and its row.
COUNT_EVENTS_AND_ROWS = "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries WHERE sink = ?)"
COUNT_MISSING = """
SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
"""
MISSING_PAGE = """
SELECT e.id FROM events e
WHERE e.id > ? AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
ORDER BY e.id LIMIT ?
"""
ADD_MISSING = """
INSERT INTO deliveries (sink, event_id, state, attempts, next_attempt_at, updated_at)
SELECT ?, e.id, 'pending', 0, 0, ? FROM events e
WHERE e.id IN (SELECT value FROM json_each(?))
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
"""
# The events an operator names: by journal id, dedup key or SendPulse message id (read before writing:
# message ids are not indexed, and a scan must not hold the writer).
EVENTS_NAMED = "SELECT id FROM events WHERE id = ? OR dedup_key = ? OR message_id = ? ORDER BY id"
DELIVERIES_OF_EVENTS = """
SELECT d.sink, d.event_id, e.dedup_key, e.title, d.state, d.last_error
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink IN ({sinks}) AND d.event_id IN ({ids}) ORDER BY d.event_id, d.sink
"""
OPEN_DEAD_LETTERS = """
SELECT d.sink, d.event_id, e.dedup_key, e.title, d.state, d.last_error
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink IN ({sinks}) AND d.state = 'dead' ORDER BY d.event_id, d.sink
"""
MARK_DISCARDED = """
UPDATE deliveries SET state = 'discarded', updated_at = ? WHERE sink = ? AND event_id = ? AND state = 'dead'
"""
INSERT_DISCARD = "INSERT INTO discards (at, sink, event_id, reason, operator, last_error) VALUES (?, ?, ?, ?, ?, ?)"
DEAD_LETTERS = """
SELECT d.event_id, e.dedup_key, e.title, d.attempts, d.last_error,
       strftime('%Y-%m-%dT%H:%M:%fZ', d.updated_at, 'unixepoch'), d.state
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink = ? AND d.state = 'dead' ORDER BY d.event_id LIMIT ?
"""
DISCARDED_LETTERS = """
SELECT d.event_id, e.dedup_key, e.title, d.attempts, d.last_error,
       strftime('%Y-%m-%dT%H:%M:%fZ', d.updated_at, 'unixepoch'), d.state,
       x.at, x.operator, x.reason
FROM deliveries d JOIN events e ON e.id = d.event_id
JOIN discards x ON x.id = (SELECT max(id) FROM discards WHERE event_id = d.event_id AND sink = d.sink)
WHERE d.sink = ? AND d.state = 'discarded' ORDER BY d.event_id LIMIT ?
"""
DISCARDS_SINCE = 5  # the schema version that has them
DEAD_LETTER_KEYS = ("event_id", "dedup_key", "title", "attempts", "last_error", "updated_at", "state")
DISCARDED_KEYS = (*DEAD_LETTER_KEYS, "discarded_at", "discarded_by", "reason")


@dataclass(frozen=True)
class Requeue:
    """Which deliveries `replay` makes pending again: dead letters only, or every state; all
    events, or those received since a moment, or one event (journal id, dedup key or SendPulse
    message id)."""

    dead_only: bool = True
    since: str | None = None  # journal time text (UTC ISO 8601, ms, Z)
    event: str | None = None

    @property
    def states(self) -> str:
        """The states re-queued: a discarded dead letter only when its event is named (undoing a discard)."""
        if self.dead_only:
            return "'dead'"
        return "'dead', 'delivered', 'discarded'" if self.event is not None else "'dead', 'delivered'"

    def describe(self) -> str:
        what = "dead letters" if self.dead_only else "deliveries"
        if self.event is not None:
            what += f" of event {self.event}"
        if self.since is not None:
            what += f" received since {self.since}"
        return what


@dataclass(frozen=True)
class Discard:
    """What `dead --discard` did: the dead letters now discarded, and when an event was named, its
    deliveries in another state (`others`) and whether the journal holds it at all (`found`)."""

    at: str
    by: str
    reason: str
    discarded: list[dict[str, Any]]
    others: list[dict[str, Any]] = field(default_factory=list)
    found: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "by": self.by,
            "reason": self.reason,
            "discarded": self.discarded,
            "others": self.others,
            "found": self.found,
        }


class DeliveryState(Writes):
    """The delivery rows of every sink, read and changed through the journal's reader and writer."""

    async def pending(self, sink: str, after_id: int, limit: int) -> list[StoredEvent]:
        """The next `limit` events `sink` has not acknowledged, in id order, after `after_id`."""
        rows = await self.query(PENDING_PAGE, (sink, after_id, limit))
        return [StoredEvent(*row) for row in rows]

    async def mark_delivered(self, sink: str, event_ids: Sequence[int]) -> None:
        """Record that `sink` holds these events (durable with the next group commit)."""
        now = time.time()
        rows = [(now, sink, event_id) for event_id in event_ids]

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.executemany(MARK_DELIVERED, rows)

        await self.write(run)

    async def mark_dead(self, sink: str, event_id: int, error: str) -> None:
        """Park an event `sink` can never take (a data error): kept, counted, replayable on demand."""
        params = (error, time.time(), sink, event_id)

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.execute(MARK_DEAD, params)

        await self.write(run)

    async def note_failure(self, sink: str, event_ids: Sequence[int], error: str, retry_at: float) -> None:
        """Count a failed attempt on events that stay pending, with the error and the next try."""
        now = time.time()
        rows = [(error, retry_at, now, sink, event_id) for event_id in event_ids]

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.executemany(NOTE_FAILURE, rows)

        await self.write(run)

    async def purge(self, received_before: datetime, sinks: Sequence[str], limit: int = 500) -> int:
        """Delete up to `limit` events received before that moment that every one of `sinks` holds
        (their delivery rows go with them); return how many. With no sink, the journal is the only
        copy: nothing is purged. The journal's record of each conversation stays."""
        if not sinks:
            return 0
        sql = PURGE_EVENTS.format(sinks=", ".join("?" * len(sinks)), n=len(sinks))
        params = (iso(received_before), *sinks, limit)

        async def run(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

        return int(await self.write(run))

    async def requeue_dead(self, sink: str) -> int:
        """Make every dead letter of `sink` pending again; return how many."""
        return await self.requeue(sink, Requeue())

    async def requeue(self, sink: str, selection: Requeue) -> int:
        """Make the selected deliveries of `sink` pending again (a replay), and give the selected events
        that have no row for it one (unless dead letters only); return how many became pending."""
        now = time.time()
        selected = (selection.since, selection.since, *[selection.event] * 4)

        async def run(conn: aiosqlite.Connection) -> int:
            count = (await conn.execute(REQUEUE.format(states=selection.states), (now, sink, *selected))).rowcount
            if not selection.dead_only:
                count += (await conn.execute(REQUEUE_MISSING, (sink, now, *selected, sink))).rowcount
            return count

        return int(await self.write(run))

    async def missing_deliveries(self, sink: str) -> int:
        """How many events have no delivery row for `sink` (journaled before it was enabled)."""
        [(events, rows)] = await self.query(COUNT_EVENTS_AND_ROWS, (sink,))
        # Rows cannot outlive their event (foreign keys cascade; `journal check` finds any that did), so
        # as many rows as events means none is missing: the exact count would read every event.
        if rows >= events:
            return 0
        [(missing,)] = await self.query(COUNT_MISSING, (sink,))
        return int(missing)

    async def add_missing_deliveries(self, sink: str, after_id: int, limit: int) -> tuple[int, int | None]:
        """Make pending for `sink`, in one transaction, the next `limit` events after `after_id` that have
        no row for it: (how many, the last id taken), or (0, None) once there are none."""
        ids = [row[0] for row in await self.query(MISSING_PAGE, (after_id, sink, limit))]
        if not ids:
            return 0, None
        params = (sink, time.time(), json.dumps(ids), sink)

        async def run(conn: aiosqlite.Connection) -> int:
            return (await conn.execute(ADD_MISSING, params)).rowcount

        added = int(await self.write(run))
        if added:
            self._notify()  # the delivery workers wake as for new events
        return added, ids[-1]

    async def discard(self, sinks: Sequence[str], event: str | None, reason: str, by: str) -> Discard:
        """Give up on the dead letters of `sinks` (those of one event, named as `replay --event` names it, or
        all with None): their state becomes `discarded`, each with a record of who, when and why."""
        at = iso(datetime.now(UTC))
        marks = ", ".join("?" * len(sinks))
        ids: list[int] = []
        if event is not None:
            ids = [row[0] for row in await self.query(EVENTS_NAMED, (_int_or_none(event), event, event))]
            if not ids:
                return Discard(at, by, reason, [], found=False)

        async def run(conn: aiosqlite.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            if event is None:
                cursor = await conn.execute(OPEN_DEAD_LETTERS.format(sinks=marks), tuple(sinks))
            else:
                cursor = await conn.execute(
                    DELIVERIES_OF_EVENTS.format(sinks=marks, ids=", ".join("?" * len(ids))), (*sinks, *ids)
                )
            discarded, others = [], []
            for sink, event_id, dedup_key, title, state, last_error in await cursor.fetchall():
                if state == "dead":
                    discarded.append(
                        {
                            "sink": sink,
                            "event_id": event_id,
                            "dedup_key": dedup_key,
                            "title": title,
                            "last_error": last_error,
                        }
                    )
                else:
                    others.append({"sink": sink, "event_id": event_id, "state": state})
            now = time.time()
            await conn.executemany(MARK_DISCARDED, [(now, d["sink"], d["event_id"]) for d in discarded])
            await conn.executemany(
                INSERT_DISCARD, [(at, d["sink"], d["event_id"], reason, by, d["last_error"]) for d in discarded]
            )
            return discarded, others

        discarded, others = await self.write(run) if sinks else ([], [])
        return Discard(at, by, reason, discarded, others)

    async def dead_letters(self, sink: str, limit: int = 100) -> list[dict[str, Any]]:
        """The first dead letters of `sink`, with their errors."""
        rows = await self.query(DEAD_LETTERS, (sink, limit))
        return [dict(zip(DEAD_LETTER_KEYS, row)) for row in rows]


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None
