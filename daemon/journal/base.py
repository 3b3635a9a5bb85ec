"""What the parts of the journal's facade (daemon.journal.store.Journal) ask of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiosqlite


class Reads:
    """A part that reads: through the journal's read connection, or a read-only one (JournalReader)."""

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError


class Writes(Reads):
    """A part that also writes, inside the writer's group commit, and wakes the delivery workers."""

    async def write(self, run: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        raise NotImplementedError

    def _notify(self) -> None:
        raise NotImplementedError
