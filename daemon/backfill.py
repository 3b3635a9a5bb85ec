"""Events journaled before a sink was enabled: made pending for it at start, in the background.

An event gets a delivery row for each sink enabled when it is inserted, so a sink enabled later (the
README's first run is journal only) has none for what came before. At start the daemon gives every
such event a pending row, a page at a time, each page its own short transaction in the group commit,
so that webhooks and deliveries go on meanwhile and readiness never waits for it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger

from daemon.journal import Journal, JournalUnavailable
from daemon.snapshot import BackfillStatus

BATCH = 2000  # rows a transaction: a few milliseconds of the writer's time
RETRY_SECONDS = 5.0  # the journal could not read or write (disk full): the backfill waits, then goes on


@dataclass
class Progress:
    state: str = "waiting"  # waiting, running, done
    total: int | None = None  # events found without a row at start; None until counted
    done: int = 0

    def as_dict(self) -> BackfillStatus:
        to_go = None if self.total is None else (0 if self.state == "done" else max(0, self.total - self.done))
        return {"state": self.state, "total": self.total, "done": self.done, "to_go": to_go}


class Backfill:
    """Give every journaled event that one of `sinks` has no row for a pending one; `run()` once."""

    def __init__(self, journal: Journal, sinks: Sequence[str], *, batch: int = BATCH):
        self.journal = journal
        self.batch = batch
        self.progress = {sink: Progress() for sink in sinks}

    def status(self, sink: str) -> BackfillStatus | None:
        """`sinks.<name>.backfill` in status; None for a sink not enabled."""
        progress = self.progress.get(sink)
        return progress.as_dict() if progress else None

    async def run(self) -> None:
        for sink, progress in self.progress.items():
            await self._fill(sink, progress)

    async def _fill(self, sink: str, progress: Progress) -> None:
        progress.total = await self._patiently(sink, lambda: self.journal.missing_deliveries(sink))
        if not progress.total:
            progress.state = "done"
            return
        logger.info(
            "{}: {} events journaled before it was enabled have no delivery row; making them pending "
            "in the background ({} a transaction)",
            sink,
            progress.total,
            self.batch,
        )
        progress.state = "running"
        after = 0
        while True:
            added, last = await self._patiently(
                sink, lambda: self.journal.add_missing_deliveries(sink, after, self.batch)
            )
            if last is None:
                break
            progress.done += added
            after = last
            await asyncio.sleep(0)  # let webhooks and deliveries queue their writes between two pages
        progress.state = "done"
        logger.info("{}: backfill done, {} events made pending", sink, progress.done)

    async def _patiently(self, sink: str, step: Any) -> Any:
        """Run one step until the journal lets it (a full disk, a read error): a backfill is never given up."""
        warned = False
        while True:
            try:
                return await step()
            except (JournalUnavailable, sqlite3.Error) as exc:
                if not self.journal.writer_alive or isinstance(exc, sqlite3.ProgrammingError):
                    raise  # the journal is closed: nothing to wait for
                if not warned:
                    logger.warning(
                        "{}: making the earlier events pending waits for the journal ({}: {}); retrying every {:.0f} s",
                        sink,
                        type(exc).__name__,
                        exc,
                        RETRY_SECONDS,
                    )
                    warned = True
                await asyncio.sleep(RETRY_SECONDS)
