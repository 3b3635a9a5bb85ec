"""The journal as the daemon uses it: `Journal` opens the file (lock, integrity, migrations), starts the
writer (daemon.journal.writer), and gathers the parts that read and write through it: delivery state,
the conversation read model, erasure and audit."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
from loguru import logger

from daemon.events import Event, Rejected, mentions_phone
from daemon.journal import files, schema
from daemon.journal.conversations import ConversationReads
from daemon.journal.deliveries import DELIVERY_STATES, DeliveryState
from daemon.journal.erasure import Erasure
from daemon.journal.errors import JournalError, is_damage, rollback
from daemon.journal.files import fetch_one
from daemon.journal.writer import AppendResult, CommitStats, Writer
from daemon.records import iso

SET_SINKS = "INSERT INTO sinks (name) VALUES (?)"
GET_META = "SELECT value FROM meta WHERE key = ?"
SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
WRITE_PROBE = """
INSERT INTO meta (key, value) VALUES ('last_write_probe', ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
COUNT_EVENTS = "SELECT count(*) FROM events"
COUNT_QUARANTINE = "SELECT count(*) FROM quarantine WHERE discarded_at IS NULL"  # the open ones
QUARANTINE_COUNTS = f"SELECT ({COUNT_QUARANTINE}), (SELECT count(*) FROM quarantine)"  # one snapshot
SELECT_COUNTERS = "SELECT name, value FROM counters"
SINK_STATE_COUNTS = """
SELECT sink, state, count(*), strftime('%Y-%m-%dT%H:%M:%fZ', max(updated_at), 'unixepoch')
FROM deliveries GROUP BY sink, state
"""
OLDEST_PENDING = """
SELECT e.received_at FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.sink = ? AND d.state = 'pending' ORDER BY d.event_id LIMIT 1
"""


class Journal(ConversationReads, DeliveryState, Erasure):
    """The durable journal; open with `await Journal.open(...)`, close with `await close()`."""

    def __init__(
        self,
        path: Path,
        sinks: Sequence[str],
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        lock_fd: int,
        last_id: int,
    ):
        self.path = path
        self.sinks = tuple(sinks)
        self._writer = Writer(writer, last_id)
        self._reader = reader
        self._lock_fd = lock_fd

    @classmethod
    async def open(cls, path: Path, sinks: Sequence[str], *, page_limit: int | None = None) -> Journal:
        """Open (creating if needed), check and migrate the journal, and start its writer task."""
        path = Path(path)
        try:
            files.make_folder(path.parent)
        except OSError as exc:
            raise JournalError(f"journal folder {path.parent}: {exc.strerror or exc}") from None
        lock_fd = files.lock(path)
        writer = reader = None
        try:
            _, initialised = files.read_lock(lock_fd)
            lost = files.lost_journal(path, initialised)
            if lost:
                raise JournalError(lost)
            try:
                files.make_private(path)
            except OSError as exc:
                raise JournalError(f"journal {path}: {exc.strerror or exc}") from None
            writer = await aiosqlite.connect(str(path), isolation_level=None)
            await files.configure(writer, path)
            await files.quick_check(writer, path)
            await schema.refuse_unversioned(writer, path)
            await schema.migrate(writer, path)
            if initialised is None:
                files.mark_initialised(lock_fd)
            await _record_sinks(writer, sinks)
            writer.isolation_level = "IMMEDIATE"
            reader = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout = 5000")
            await reader.create_function("mentions_phone", 2, mentions_phone, deterministic=True)  # forget's dry run
            (last_id,) = await fetch_one(writer, "SELECT coalesce(max(id), 0) FROM events")
            # two statements: together, max() and count(*) lose their shortcuts and read the whole table
            (events,) = await fetch_one(writer, COUNT_EVENTS)
        except BaseException as exc:
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()
            os.close(lock_fd)
            if is_damage(exc):  # met past the check (a budget run out) or by the check itself
                raise JournalError(files.damaged(path, str(exc))) from None
            raise
        journal = cls(path, sinks, writer, reader, lock_fd, last_id)
        if page_limit is not None:
            await journal.set_page_limit(page_limit)
        journal._writer.start()
        logger.info(
            "journal {} open (schema v{}, {} events, sinks: {})",
            path,
            schema.SCHEMA_VERSION,
            events,
            ", ".join(sinks) or "none",
        )
        return journal

    # -- writing ---------------------------------------------------------------------------------

    async def append(self, events: Sequence[Event], rejected: Sequence[Rejected] = ()) -> AppendResult:
        """Commit events (deduplicated) and quarantined elements durably; return what happened."""
        return await self._writer.append(events, rejected)

    async def write(self, run: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        """Run `run(conn)` inside the next group-commit transaction; return its result once durable."""
        return await self._writer.write(run)

    async def meta(self, key: str) -> str | None:
        """A value the daemon keeps between runs (the journal's meta table)."""
        rows = await self.query(GET_META, (key,))
        return rows[0][0] if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async def run(conn: aiosqlite.Connection) -> None:
            await conn.execute(SET_META, (key, value))

        await self.write(run)

    async def probe(self) -> None:
        """Make a tiny durable write; raise JournalUnavailable if the journal cannot write."""

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.execute(WRITE_PROBE, (iso(datetime.now(UTC)),))

        await self.write(run)

    async def ping(self) -> None:
        """Return once the writer task has gone round its loop: it is alive and not stuck."""
        await self._writer.ping()

    async def set_page_limit(self, pages: int | None) -> int:
        """Cap the database size in pages (None: no cap): the disk-full drill used by the tests."""
        limit = 0xFFFFFFFE if pages is None else int(pages)  # SQLite's own maximum
        (effective,) = await fetch_one(self._writer.conn, f"PRAGMA max_page_count = {limit}")
        return int(effective)

    async def page_count(self) -> int:
        (pages,) = await fetch_one(self._writer.conn, "PRAGMA page_count")
        return int(pages)

    async def checkpoint(self, attempts: int = 20) -> bool:
        """Copy the WAL into the database and truncate it (after an erasure, no old page stays in the
        WAL); False if readers kept it busy every time."""
        for _ in range(attempts):
            try:
                (busy, _, _) = await fetch_one(self._writer.conn, "PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:  # the writer was inside a group commit just then
                busy = 1
            if not busy:
                return True
            await asyncio.sleep(0.05)
        return False

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(last_event_id)` after every commit that added events or made old ones pending."""
        self._writer.add_listener(listener)

    def remove_listener(self, listener: Callable[[int], None]) -> None:
        self._writer.remove_listener(listener)

    def _notify(self) -> None:
        self._writer.notify()

    @property
    def writable(self) -> bool:
        """False from a commit that failed to write until one succeeds (intake answers 503 meanwhile)."""
        return self._writer.writable

    @property
    def stats(self) -> CommitStats:
        return self._writer.stats

    @property
    def writer_alive(self) -> bool:
        return self._writer.alive

    @property
    def writer_task(self) -> asyncio.Task[None] | None:
        return self._writer.task

    @property
    def last_event_id(self) -> int:
        return self._writer.last_id

    # -- reading ---------------------------------------------------------------------------------

    async def counts(self) -> dict[str, Any]:
        """Events, quarantine, webhook counters and per-sink delivery counts, from the read connection."""
        reader = self._reader
        (events,) = await fetch_one(reader, COUNT_EVENTS)
        quarantined, quarantine_all = await fetch_one(reader, QUARANTINE_COUNTS)
        counters: dict[str, int] = {
            name: value for name, value in await (await reader.execute(SELECT_COUNTERS)).fetchall()
        }
        sinks: dict[str, dict[str, Any]] = {}
        for sink, state, count, latest in await (await reader.execute(SINK_STATE_COUNTS)).fetchall():
            entry = sinks.setdefault(sink, {**{s: 0 for s in DELIVERY_STATES}, "dead_last_at": None})
            entry[state] = count
            if state == "dead":
                entry["dead_last_at"] = latest  # when the latest open dead letter died
        for sink in sinks:
            row = await (await reader.execute(OLDEST_PENDING, (sink,))).fetchone()  # none when nothing is pending
            sinks[sink]["oldest_pending_at"] = row[0] if row else None
        return {
            "events": events,
            "quarantined": quarantined,
            "quarantine_discarded": quarantine_all - quarantined,
            "counters": counters,
            "sinks": sinks,
        }

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the reader connection."""
        cursor = await self._reader.execute(sql, params)
        return [tuple(row) for row in await cursor.fetchall()]

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit everything already submitted, stop the writer, close both connections."""
        if self._writer.closing:
            return
        await self._writer.stop()
        for conn in (self._reader, self._writer.conn):
            try:
                await conn.close()
            except Exception:
                logger.exception("closing a journal connection failed")
        os.close(self._lock_fd)
        logger.info("journal {} closed", self.path)


async def _record_sinks(conn: aiosqlite.Connection, sinks: Sequence[str]) -> None:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute("DELETE FROM sinks")
        await conn.executemany(SET_SINKS, [(sink,) for sink in sinks])
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise
