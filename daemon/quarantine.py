"""The journal's quarantine as `chatledger quarantine` shows it: the rejected webhook elements with why, when
and a preview; discarding one records who, when and why on its row (it stays, and `forget` still erases it)."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from daemon.journal import QUARANTINE_COUNTS, Journal, read_only
from daemon.records import iso

PREVIEW_CHARS = 120
# What must not reach a terminal as it is (escape sequences, line breaks): C0, DEL, C1 and the Unicode
# line and paragraph separators. A preview is one line.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

ELEMENT_KEYS = ("id", "received_at", "reason", "length", "discarded_at", "discarded_by", "discard_reason")
# {element}: the element whole, or only what its preview needs
LISTING = """
SELECT id, received_at, reason, length(raw), discarded_at, discarded_by, discard_reason, {element}
FROM quarantine WHERE discarded_at IS {state} ORDER BY id LIMIT ?
"""
# A journal not migrated yet (read without the daemon, before its first start since the upgrade)
LISTING_UNMIGRATED = """
SELECT id, received_at, reason, length(raw), NULL, NULL, NULL, {element}
FROM quarantine WHERE {no_discards} ORDER BY id LIMIT ?
"""
COUNTS_UNMIGRATED = "SELECT (SELECT count(*) FROM quarantine), (SELECT count(*) FROM quarantine)"
DISCARD_ONE = """
UPDATE quarantine SET discarded_at = ?, discarded_by = ?, discard_reason = ?
WHERE id = ? AND discarded_at IS NULL RETURNING id
"""
DISCARD_OPEN = """
UPDATE quarantine SET discarded_at = ?, discarded_by = ?, discard_reason = ? WHERE discarded_at IS NULL RETURNING id
"""
DISCARDED_ONE = "SELECT discarded_at, discarded_by, discard_reason FROM quarantine WHERE id = ?"


def printable(text: str) -> str:
    """`text` with what would drive a terminal escaped (`\\x1b`, `\\n`, `\\u2028`)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def preview(raw: str, length: int | None = None, limit: int = PREVIEW_CHARS) -> str:
    """An element on one line, escaped, cut at `limit` characters (never inside an escape) with its whole
    length said; `raw` may be only the element's start when `length` gives the whole."""
    length = len(raw) if length is None else length
    shown, taken = "", 0
    for char in raw[:limit]:
        piece = printable(char)
        if len(shown) + len(piece) > limit:
            break
        shown, taken = shown + piece, taken + 1
    return shown if taken == length else f"{shown}… ({length} characters)"


def _listing(rows: list[tuple[Any, ...]], counts: tuple[int, int], whole: bool) -> dict[str, Any]:
    elements = []
    for row in rows:
        element = dict(zip(ELEMENT_KEYS, row[:-1]))
        element["preview"] = preview(row[-1], element["length"])
        if whole:
            element["raw"] = row[-1]
        elements.append(element)
    open_, total = counts
    return {"open": open_, "discarded": total - open_, "elements": elements}


def _listing_sql(discarded: bool, whole: bool, migrated: bool = True) -> str:
    element = "raw" if whole else f"substr(raw, 1, {PREVIEW_CHARS})"  # a preview needs no more
    if migrated:
        return LISTING.format(element=element, state="NOT NULL" if discarded else "NULL")
    return LISTING_UNMIGRATED.format(element=element, no_discards="false" if discarded else "true")


async def list_quarantine(journal: Journal, limit: int, discarded: bool = False, whole: bool = False) -> dict[str, Any]:
    """The open quarantined elements (or the discarded ones), oldest first, and how many of each there are."""
    rows = await journal.query(_listing_sql(discarded, whole), (limit,))
    [counts] = await journal.query(QUARANTINE_COUNTS)
    return _listing(rows, counts, whole)


def read_quarantine(path: Path, limit: int, discarded: bool = False, whole: bool = False) -> dict[str, Any]:
    """As list_quarantine, through a read-only connection: no daemon needed, no lock taken."""

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        migrated = "discarded_at" in {row[1] for row in conn.execute("PRAGMA table_info(quarantine)")}
        rows = conn.execute(_listing_sql(discarded, whole, migrated), (limit,)).fetchall()
        counts = conn.execute(QUARANTINE_COUNTS if migrated else COUNTS_UNMIGRATED).fetchone()
        return _listing(rows, counts, whole)

    return read_only(path, read)


async def discard_quarantined(journal: Journal, element: int | None, reason: str, by: str) -> dict[str, Any]:
    """Give up one open quarantined element (or all of them with None), recording who, when and why; say
    whether the element exists and, when it was discarded before, by whom."""
    at = iso(datetime.now(UTC))

    async def run(conn: aiosqlite.Connection) -> dict[str, Any]:
        if element is None:
            ids = [row[0] for row in await (await conn.execute(DISCARD_OPEN, (at, by, reason))).fetchall()]
            return {"discarded": sorted(ids), "found": True, "already": None}
        ids = [row[0] for row in await (await conn.execute(DISCARD_ONE, (at, by, reason, element))).fetchall()]
        if ids:
            return {"discarded": ids, "found": True, "already": None}
        before = await (await conn.execute(DISCARDED_ONE, (element,))).fetchone()
        already = dict(zip(("at", "by", "reason"), before)) if before else None
        return {"discarded": [], "found": before is not None, "already": already}

    return {"at": at, "by": by, "reason": reason, **await journal.write(run)}


# -- as the command prints it ---------------------------------------------------------------------


def render_quarantine(answer: dict[str, Any], discarded: bool, config: str) -> str:
    """The listing as `chatledger quarantine` prints it: each element's id, time and reason, then its preview."""
    lines = []
    for element in answer["elements"]:
        lines.append(f"{element['id']:<6} {element['received_at']}  {printable(element['reason'])}")
        if discarded:
            lines.append(
                f"{'':<6} discarded {element['discarded_at']} by {printable(element['discarded_by'] or '?')}"
                f", reason: {printable(element['discard_reason'] or '')}"
            )
        lines.append(f"{'':<6} {element['preview']}")
    shown, total = len(answer["elements"]), answer["discarded" if discarded else "open"]
    state = "discarded" if discarded else "open"
    if not total:
        lines.append(f"no {state} quarantined elements")
    else:
        first = f" (the first {shown} listed: --limit N for more)" if shown < total else ""
        lines.append(f"{total} {state} quarantined element{'' if total == 1 else 's'}{first}")
    if not discarded and total:
        lines[-1] += (
            f"; to give one up, once looked at: chatledger quarantine --discard ID|--all --reason TEXT {config}"
        )
    if not discarded and answer["discarded"]:
        lines[-1] += f" ({answer['discarded']} discarded: --discarded lists them)"
    return "\n".join(lines)


def discard_problem(answer: dict[str, Any], element: int | None) -> str | None:
    """Why nothing was discarded, or None."""
    if answer["discarded"]:
        return None
    if element is None:
        return "no open quarantined elements to discard"
    if not answer["found"]:
        return f"no quarantined element {element} (`chatledger quarantine` lists them with their ids)"
    already = answer["already"] or {}
    return (
        f"element {element} was already discarded at {already.get('at')} by {already.get('by')}: "
        f"{already.get('reason')}; nothing changed"
    )


def discarded_text(answer: dict[str, Any], where: str) -> str:
    """What `quarantine --discard` did, said."""
    ids = answer["discarded"]
    which = (
        f"element {ids[0]} discarded"
        if len(ids) == 1
        else (f"{len(ids)} elements discarded ({', '.join(map(str, ids[:20]))}{', …' if len(ids) > 20 else ''})")
    )
    return (
        f"{which} by {answer['by']} at {answer['at']} ({where}): {answer['reason']}\n"
        "`chatledger quarantine --discarded` lists them"
    )
