"""Erasure (`chatledger forget`): one person's events, conversation records and quarantined elements
erased, and the audit that records each erasure with nothing the subject could be found from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from daemon.events import has_control, mentions_phone
from daemon.journal.base import Writes
from daemon.records import iso

# One person's events: by phone, or by a conversation of that phone. A dry run counts with the same terms.
OF_PERSON = "phone = ? OR conversation_id IN (SELECT value FROM json_each(?))"
NAMING_PHONE = "mentions_phone(raw, ?)"  # daemon.events.mentions_phone
FORGET_EVENTS = f"DELETE FROM events WHERE {OF_PERSON} RETURNING dedup_key"
FORGET_CONVERSATIONS = f"DELETE FROM conversations WHERE {OF_PERSON}"
FORGET_QUARANTINE = f"DELETE FROM quarantine WHERE {NAMING_PHONE}"
EVENTS_OF_PERSON = f"SELECT dedup_key FROM events WHERE {OF_PERSON}"
COUNT_CONVERSATIONS_OF_PERSON = f"SELECT count(*) FROM conversations WHERE {OF_PERSON}"
COUNT_QUARANTINE_NAMING = f"SELECT count(*) FROM quarantine WHERE {NAMING_PHONE}"
INSERT_AUDIT = "INSERT INTO audit (at, action, last4, reference, report) VALUES (?, ?, ?, ?, ?)"
AUDIT_ENTRIES = "SELECT id, at, action, last4, reference, report FROM audit ORDER BY id"
AUDIT_KEYS = ("id", "at", "action", "last4", "reference", "report")
REFERENCE_MAX = 100


def reference_problem(reference: str, phone: str) -> str | None:
    """Why an operator's reference (a ticket id) cannot go into the audit entry of erasing `phone`."""
    if not reference.strip():
        return "is empty"
    if len(reference) > REFERENCE_MAX:
        return f"must be at most {REFERENCE_MAX} characters"
    if has_control(reference):
        return "must not hold a control character"
    if mentions_phone(reference, phone):
        return "must not hold the phone number: the audit keeps nothing it could be found from"
    return None


class Erasure(Writes):
    """Erase one person, count what that would erase, and keep the audit."""

    async def forget(self, phone: str, conversation_ids: Sequence[str]) -> tuple[dict[str, int], list[str]]:
        """Erase one person: their events (delivery rows go with them), their conversations' records and
        quarantined elements naming the phone. Counts per table, and the erased events' dedup keys."""
        params = (phone, json.dumps(list(conversation_ids)))

        async def run(conn: aiosqlite.Connection) -> tuple[dict[str, int], list[str]]:
            await conn.create_function("mentions_phone", 2, mentions_phone, deterministic=True)
            keys = [row[0] for row in await (await conn.execute(FORGET_EVENTS, params)).fetchall()]
            conversations = (await conn.execute(FORGET_CONVERSATIONS, params)).rowcount
            quarantined = (await conn.execute(FORGET_QUARANTINE, (phone,))).rowcount
            return {"events": len(keys), "conversations": conversations, "quarantined": quarantined}, keys

        erased: tuple[dict[str, int], list[str]] = await self.write(run)
        return erased

    async def forget_counts(self, phone: str, conversation_ids: Sequence[str]) -> tuple[dict[str, int], list[str]]:
        """What `forget` would erase (a dry run): the same counts and dedup keys, read without writing."""
        params = (phone, json.dumps(list(conversation_ids)))
        keys = [row[0] for row in await self.query(EVENTS_OF_PERSON, params)]
        [(conversations,)] = await self.query(COUNT_CONVERSATIONS_OF_PERSON, params)
        [(quarantined,)] = await self.query(COUNT_QUARANTINE_NAMING, (phone,))
        return {"events": len(keys), "conversations": conversations, "quarantined": quarantined}, keys

    async def audit(
        self, action: str, report: dict[str, Any], *, last4: str | None = None, reference: str | None = None
    ) -> dict[str, Any]:
        """Record an erasure: when, what, how much, and nothing the subject could be found from; returns it."""
        entry = {
            "at": iso(datetime.now(UTC)),
            "action": action,
            "last4": last4,
            "reference": reference,
            "report": report,
        }
        params = (entry["at"], action, last4, reference, json.dumps(report, sort_keys=True))

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.execute(INSERT_AUDIT, params)

        await self.write(run)
        return entry

    async def audit_entries(self) -> list[dict[str, Any]]:
        rows = await self.query(AUDIT_ENTRIES)
        return [{**dict(zip(AUDIT_KEYS, row)), "report": json.loads(row[-1])} for row in rows]
