"""The journal read without the daemon's help, safe beside a running daemon (WAL lets readers in) or
without one: a read-only JournalReader, the dead letters, and `chatledger journal check [--repair]` (is
the journal whole, and does every event have its deliveries?)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from daemon.journal import schema
from daemon.journal.conversations import ConversationReads
from daemon.journal.deliveries import (
    DEAD_LETTER_KEYS,
    DEAD_LETTERS,
    DISCARDED_KEYS,
    DISCARDED_LETTERS,
    DISCARDS_SINCE,
)
from daemon.journal.errors import JournalError
from daemon.journal.files import fetch_one, lock, unreadable


class JournalReader(ConversationReads):
    """The journal's reads through a read-only connection, for a command beside a running daemon (WAL
    lets readers in) or without one: no lock taken, nothing migrated or written."""

    def __init__(self, path: Path, conn: aiosqlite.Connection):
        self.path = path
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> JournalReader:
        path = Path(path)
        problem = unreadable(path)
        if problem:
            raise JournalError(problem)
        try:
            conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {path}: cannot open it read-only: {exc}") from None
        try:
            await conn.execute("PRAGMA busy_timeout = 5000")
            (version,) = await fetch_one(conn, "PRAGMA user_version")
        except sqlite3.Error as exc:
            await conn.close()
            raise JournalError(f"journal {path}: {exc}") from None
        if version != schema.SCHEMA_VERSION:
            await conn.close()
            raise JournalError(
                f"journal {path} is at schema v{version}, this chatledger reads v{schema.SCHEMA_VERSION}: "
                "start the daemon once to bring it up to date"
            )
        return cls(path, conn)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = await self._conn.execute(sql, params)
        return [tuple(row) for row in await cursor.fetchall()]

    async def close(self) -> None:
        await self._conn.close()


_T = TypeVar("_T")


def read_only(path: Path, read: Callable[[sqlite3.Connection], _T]) -> _T:
    """`read` on a read-only connection to the journal: safe beside a running daemon (WAL lets readers in)
    and without one; any SQLite error is a JournalError."""
    problem = unreadable(path)
    if problem:
        raise JournalError(problem)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise JournalError(f"journal {path}: cannot open it read-only: {exc}") from None
    try:
        return read(conn)
    except sqlite3.Error as exc:
        raise JournalError(f"journal {path}: {exc}") from None
    finally:
        conn.close()


def read_dead_letters(
    path: Path, sinks: Sequence[str], limit: int, discarded: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Dead letters per sink (or the discarded ones), without the daemon's help (read_only)."""

    def read(conn: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
        if discarded and conn.execute("PRAGMA user_version").fetchone()[0] < DISCARDS_SINCE:
            return {sink: [] for sink in sinks}  # not migrated yet: nothing was ever discarded
        sql, keys = (DISCARDED_LETTERS, DISCARDED_KEYS) if discarded else (DEAD_LETTERS, DEAD_LETTER_KEYS)
        return {sink: [dict(zip(keys, row)) for row in conn.execute(sql, (sink, limit))] for sink in sinks}

    return read_only(path, read)


# -- `chatledger journal check [--repair]` ----------------------------------------------------------

ORPHAN_DELIVERIES = """
SELECT d.sink, count(*) FROM deliveries d LEFT JOIN events e ON e.id = d.event_id
WHERE e.id IS NULL GROUP BY d.sink ORDER BY d.sink
"""
MISSING_DELIVERIES = """
SELECT count(*) FROM events e
WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
"""
STATE_COUNTS = "SELECT sink, state, count(*) FROM deliveries GROUP BY sink, state ORDER BY sink, state"
ADD_MISSING = """
INSERT INTO deliveries (sink, event_id, state, attempts, next_attempt_at, updated_at)
SELECT ?, e.id, 'pending', 0, 0, (julianday('now') - 2440587.5) * 86400.0 FROM events e
WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.sink = ? AND d.event_id = e.id)
"""
DROP_ORPHANS = "DELETE FROM deliveries WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = deliveries.event_id)"


@dataclass
class JournalReport:
    path: Path
    integrity: list[str] = field(default_factory=list)
    schema_version: int = 0
    events: int = 0
    states: dict[str, dict[str, int]] = field(default_factory=dict)
    orphans: dict[str, int] = field(default_factory=dict)  # delivery rows whose event is gone, by sink
    missing: dict[str, int] = field(default_factory=dict)  # events without a delivery row, by enabled sink
    repaired: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = []
        if self.integrity != ["ok"]:
            out.append("SQLite integrity check: " + "; ".join(self.integrity[:10]))
        if self.schema_version != schema.SCHEMA_VERSION:
            out.append(
                f"schema v{self.schema_version}, this chatledger expects v{schema.SCHEMA_VERSION} "
                "(starting the daemon migrates it)"
            )
        out += [f"{n} {sink} delivery rows have no event" for sink, n in self.orphans.items() if n]
        out += [f"{n} events have no {sink} delivery row" for sink, n in self.missing.items() if n]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "integrity": self.integrity,
            "schema_version": self.schema_version,
            "events": self.events,
            "deliveries": self.states,
            "orphan_deliveries": self.orphans,
            "events_without_delivery": self.missing,
            "problems": self.problems,
            "repaired": self.repaired,
        }


def check_journal(path: Path, sinks: list[str], *, repair: bool = False) -> JournalReport:
    """Check (read-only, safe beside a running daemon) or repair (needs the daemon stopped)."""
    problem = unreadable(path)
    if problem:
        raise JournalError(problem)
    lock_fd = lock(path) if repair else None  # a running daemon refuses the repair
    try:
        return _check(path, sinks, repair)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def _check(path: Path, sinks: list[str], repair: bool) -> JournalReport:
    uri = f"file:{path}?mode={'rw' if repair else 'ro'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None)
    except sqlite3.Error as exc:
        raise JournalError(f"journal {path}: cannot open it: {exc}") from None
    report = JournalReport(path)
    try:
        report.integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        report.schema_version = conn.execute("PRAGMA user_version").fetchone()[0]
        if report.schema_version == 0:
            return report
        if repair:
            conn.execute("BEGIN IMMEDIATE")
            for sink in sinks:
                added = conn.execute(ADD_MISSING, (sink, sink)).rowcount
                if added:
                    report.repaired.append(f"{added} missing {sink} delivery rows added as pending")
            dropped = conn.execute(DROP_ORPHANS).rowcount
            if dropped:
                report.repaired.append(f"{dropped} delivery rows without an event removed")
            conn.execute("COMMIT")
        report.events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        for sink, state, count in conn.execute(STATE_COUNTS):
            report.states.setdefault(sink, {})[state] = count
        report.orphans = dict(conn.execute(ORPHAN_DELIVERIES).fetchall())
        report.missing = {sink: conn.execute(MISSING_DELIVERIES, (sink,)).fetchone()[0] for sink in sinks}
    except sqlite3.Error as exc:
        raise JournalError(f"journal {path}: {exc}") from None
    finally:
        conn.close()
    return report
