"""The journal's errors, and what SQLite's failures mean for it."""

from __future__ import annotations

import sqlite3

import aiosqlite

SQLITE_INTERRUPT, SQLITE_CORRUPT, SQLITE_NOTADB = 9, 11, 26


class JournalError(Exception):
    """The journal cannot be opened or used (newer schema, in use, corrupt)."""


class JournalUnavailable(Exception):
    """A write could not be made durable (disk full, read-only, I/O error); nothing was committed."""


def is_damage(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.DatabaseError) else None
    return code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


async def rollback(conn: aiosqlite.Connection) -> None:
    try:
        if conn.in_transaction:
            await conn.rollback()
    except sqlite3.Error:
        pass  # SQLite already rolled back (SQLITE_FULL and I/O errors do that themselves)
