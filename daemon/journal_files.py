"""The journal's files on disk: owner-only modes, and what to say when a journal is unreadable (the
messages; daemon.journal raises them)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from loguru import logger

# Phones and message texts: the owner (the daemon's user) only, whatever the umask.
FILE_MODE = 0o600
FOLDER_MODE = 0o700


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
                logger.warning("journal file {} is mode {:o} (readable by others) and cannot be changed: {}",
                               file, mode, exc.strerror or exc)
                continue
            logger.warning("journal file {} was mode {:o}, now {:o}: it holds phone numbers and messages",
                           file, mode, mode & 0o700)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    return (f"journal {path}: permission denied (the journal is readable by the daemon's user only): "
            "run the command as that user, e.g. sudo -u chatledger chatledger ...")
