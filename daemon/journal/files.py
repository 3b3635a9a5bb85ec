"""The journal's files on disk: owner-only modes, the lock and what it remembers, how SQLite keeps the file
(WAL, synchronous=FULL), the integrity check at open, and what to say when a journal is damaged, lost or
unreadable."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import sqlite3
import stat
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
from loguru import logger

from daemon.journal.errors import SQLITE_INTERRUPT, JournalError, is_damage

# Phones and message texts: the owner (the daemon's user) only, whatever the umask. Folders the group
# may pass through (the example config keeps the status socket beside the journal); the files stay closed.
FILE_MODE = 0o600
FOLDER_MODE = 0o750
INITIALISED = "initialised"  # the lock file's second line, once the journal's first migration committed
PREREAD_CHUNK = 1 << 20
# At open every page is read once (PRAGMA quick_check), within a budget so that a huge journal on a
# slow disk cannot hold the start past systemd's TimeoutStartSec (1M events, 850 MiB: 3-5 s).
QUICK_CHECK_SECONDS = 20.0
QUICK_CHECK_ERRORS = 10
QUICK_CHECK_STEPS = 10000  # SQLite VM steps between looks at the clock


def siblings(path: Path) -> list[Path]:
    """The files SQLite and chatledger keep beside the journal."""
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", ".lock")]


def make_folder(folder: Path) -> None:
    """Create the folder and any missing parent owner-only (existing ones are not ours to change)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for level in reversed(missing):
        try:
            os.mkdir(level, FOLDER_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else
        os.chmod(level, FOLDER_MODE)  # a umask can only take bits away, but make it exact


def make_private(path: Path) -> None:
    """Create the journal file owner-only before SQLite does (its -wal and -shm then take the same
    mode), and take group and other access off journal files that have it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        pass
    else:
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        _fsync_folder(path.parent)  # the new journal's name is durable before anything is committed in it
    for file in (path, *siblings(path)):
        try:
            mode = stat.S_IMODE(os.stat(file).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            try:
                os.chmod(file, mode & 0o700)
            except OSError as exc:
                logger.warning(
                    "journal file {} is mode {:o} (readable by others) and cannot be changed: {}",
                    file,
                    mode,
                    exc.strerror or exc,
                )
                continue
            logger.warning(
                "journal file {} was mode {:o}, now {:o}: it holds phone numbers and messages", file, mode, mode & 0o700
            )


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lock(fd: int) -> tuple[str, str | None]:
    """The lock file's holder (its first line) and its `initialised` line, if any."""
    lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
    holder = lines[0].strip() if lines else ""
    return holder, next((line for line in lines[1:] if line.startswith(INITIALISED)), None)


def write_lock(fd: int, initialised: str | None) -> None:
    """Write our pid, keeping what the lock file knows about the journal."""
    text = f"{os.getpid()}\n" + (f"{initialised}\n" if initialised else "")
    os.pwrite(fd, text.encode(), 0)  # over the old content, then cut: the initialised line is never absent
    os.ftruncate(fd, len(text.encode()))


def mark_initialised(fd: int) -> None:
    """Record that this journal exists: from now on an empty or missing journal file is a loss."""
    write_lock(fd, f"{INITIALISED} {datetime.now(UTC).isoformat(timespec='seconds')}")
    os.fsync(fd)


def lost_journal(path: Path, initialised: str | None) -> str | None:
    """Why the journal must not be (re)created here, or None: the lock file says one existed."""
    if initialised is None:
        return None
    try:
        if path.stat().st_size:
            return None
        state = "is empty (0 bytes)"
    except FileNotFoundError:
        state = "is missing"
    lock = path.with_name(path.name + ".lock")
    when = initialised[len(INITIALISED) :].strip()
    return (
        f"journal {path} {state}, but its lock file {lock} shows a journal was created there ({when}): its "
        "events are gone, and starting would begin a new, empty journal in their place. Stop here and put "
        "the journal back (a backup, or wherever it went), then start again. To start a new, empty journal "
        f"deliberately, remove {path} and {lock} (events the old journal had not delivered are then lost)."
    )


def damaged(path: Path, detail: str) -> str:
    """The message for a damaged journal: what happened and the recovery steps (README has them too)."""
    return (
        f"journal {path} is damaged ({detail}); chatledger does not start on it. To save what it holds "
        '(README, "When the journal is damaged"):\n'
        "  1. stop chatledger and set the damaged files aside (the -wal and -shm only if they exist):\n"
        f"     mv {path} {path}.damaged; mv {path}-wal {path}.damaged-wal; mv {path}-shm {path}.damaged-shm\n"
        "  2. as the daemon's user (sudo -u chatledger ...), copy what is readable into a new journal:\n"
        f'     sqlite3 {path}.damaged ".recover" | sqlite3 {path}\n'
        '     (a sqlite3 that answers "no such table: sqlite_dbpage", as Debian 12\'s does, cannot .recover:\n'
        "     use the README's .dump variant)\n"
        "  3. as the daemon's user: chatledger journal check --repair --config PATH\n"
        "  4. start chatledger\n"
        "The rows of the damaged pages may be lost: events no sink had yet are then gone; events whose "
        "delivery rows were lost are made pending by step 3 (sinks skip what they already hold)."
    )


def unreadable(path: Path) -> str | None:
    """Why this user cannot read the journal (None if it can): a clear message instead of a traceback."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"journal {path} does not exist"
    except PermissionError:
        pass
    else:
        if os.access(path, os.R_OK):
            return None
    return (
        f"journal {path}: permission denied (the journal is readable by the daemon's user only): "
        "run the command as that user, e.g. sudo -u chatledger chatledger ..."
    )


def preread(path: Path, deadline: float) -> None:
    """Read the file once in order, so the integrity check's scattered reads hit the page cache
    (1M events, 850 MiB, cold cache: 4-5 s instead of 18-31 s); stop at the deadline."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            logger.debug("journal pre-read skipped: {}", exc)
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        buffer = bytearray(PREREAD_CHUNK)
        while os.readv(fd, [buffer]) and time.monotonic() < deadline:
            pass
    finally:
        os.close(fd)


def lock(path: Path) -> int:
    """Take the journal's lock file (one chatledger per journal) and write our pid in it; its fd."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise JournalError(f"journal lock {lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_lock(fd)[0] or "another process"
        os.close(fd)
        raise JournalError(f"journal {path} is in use by another chatledger (pid {holder})") from None
    write_lock(fd, read_lock(fd)[1])
    return fd


async def configure(conn: aiosqlite.Connection, path: Path) -> None:
    """Set the connection as the journal needs it: WAL, synchronous=FULL, foreign keys, secure delete."""
    try:
        (mode,) = await fetch_one(conn, "PRAGMA journal_mode = WAL")
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {path}: cannot switch to WAL mode (got {mode})")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA secure_delete = ON")  # erased data is overwritten, not left in free pages
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA cache_size = -32768")  # 32 MiB: index pages stay in memory
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise JournalError(damaged(path, f"not a usable SQLite database: {exc}")) from None
        raise JournalError(f"journal {path}: not a usable SQLite database: {exc}") from None


async def quick_check(conn: aiosqlite.Connection, path: Path) -> None:
    """Read every page once (PRAGMA quick_check) and refuse a damaged journal; past the time budget,
    warn and go on (the damage, if any, is then met when its page is read)."""
    started = time.monotonic()
    deadline = started + QUICK_CHECK_SECONDS
    await asyncio.to_thread(preread, path, deadline)
    await conn.set_progress_handler(lambda: time.monotonic() > deadline, QUICK_CHECK_STEPS)
    check = asyncio.ensure_future(_fetch_all(conn, f"PRAGMA quick_check({QUICK_CHECK_ERRORS})"))
    try:
        if not (await asyncio.wait({check}, timeout=max(0.0, deadline - time.monotonic())))[0]:
            await conn.interrupt()  # the b-tree walk is one VM step the progress handler never sees
        found = [row[0] for row in await check]
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) != SQLITE_INTERRUPT:
            raise
        logger.warning(
            "journal {}: integrity check stopped after {:.0f} s, the budget at start; the part "
            "read was sound. `chatledger journal check` checks it whole",
            path,
            QUICK_CHECK_SECONDS,
        )
        return
    finally:
        if not check.done():
            check.cancel()
        await conn.set_progress_handler(None, 0)  # type: ignore[arg-type]  # None removes it (sqlite3's docs)
    if found != ["ok"]:
        raise JournalError(damaged(path, "; ".join(found[:3])))
    logger.debug("journal {}: integrity quick check ok in {:.1f} s", path, time.monotonic() - started)


async def _fetch_all(conn: aiosqlite.Connection, sql: str) -> list[Any]:
    return list(await (await conn.execute(sql)).fetchall())


async def fetch_one(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
    """The row a PRAGMA or an aggregate always answers."""
    row = await (await conn.execute(sql, params)).fetchone()
    if row is None:
        raise JournalError(f"the journal answered no row to {sql.split()[0]} {sql.split()[1]}")
    return tuple(row)
