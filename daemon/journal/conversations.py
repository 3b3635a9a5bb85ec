"""The journal's read model of conversations: its record of each (folded by intake in each group commit,
daemon.journal.intake FOLD) and the events it holds of them. Reads only: the daemon's Journal and an
offline JournalReader share it."""

from __future__ import annotations

from collections.abc import Sequence

from daemon.events import StoredEvent
from daemon.journal.base import Reads
from daemon.journal.schema import EVENT_COLUMNS
from daemon.records import ConversationState, later_status

CONVERSATION_EVENTS = f"""
SELECT e.id, {", ".join("e." + c for c in EVENT_COLUMNS)}
FROM events e WHERE e.conversation_id = ? ORDER BY e.id LIMIT ?
"""
SELECT_CONVERSATIONS = """
SELECT conversation_id, bot_id, contact_id, service, phone, name, first_event_at, last_event_at,
       first_message_at, last_message_at, message_count, status_title, status_at, updated_at
FROM conversations WHERE conversation_id IN ({marks})
"""
HAS_EVENT = "SELECT 1 FROM events WHERE dedup_key = ?"
EVENT_TIMES = "SELECT dedup_key, occurred_at, received_at FROM events WHERE dedup_key IN ({marks})"
# The same title condition as the v8 index's, for the planner to use it.
STATUS_REPORTS = """
SELECT message_id, json_extract(raw, '$.status') FROM events
WHERE title IN ('api_interaction', 'delivery_status') AND message_id IN ({marks})
"""
EVENTS_BY_KEY_RANGE = f"""
SELECT e.id, {", ".join("e." + c for c in EVENT_COLUMNS)}
FROM events e WHERE e.dedup_key >= ? AND e.dedup_key < ? ORDER BY e.id
"""
CONVERSATIONS_OF_PHONE = "SELECT conversation_id FROM conversations WHERE phone = ?"


class ConversationReads(Reads):
    """Conversations and their events, by id, phone or dedup key."""

    async def conversations(self, conversation_ids: Sequence[str]) -> dict[str, ConversationState]:
        """The journal's record of these conversations (those it knows)."""
        found: dict[str, ConversationState] = {}
        ids = list(dict.fromkeys(conversation_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self.query(SELECT_CONVERSATIONS.format(marks=", ".join("?" * len(chunk))), chunk)
            found.update((row[0], ConversationState(*row)) for row in rows)
        return found

    async def events_of_conversation(self, conversation_id: str, limit: int) -> list[StoredEvent]:
        return [StoredEvent(*row) for row in await self.query(CONVERSATION_EVENTS, (conversation_id, limit))]

    async def has_event(self, dedup_key: str) -> bool:
        return bool(await self.query(HAS_EVENT, (dedup_key,)))

    async def event_times(self, dedup_keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """(occurred_at, received_at) of the events the journal holds under these keys."""
        keys = list(dict.fromkeys(dedup_keys))
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = await self.query(EVENT_TIMES.format(marks=", ".join("?" * len(chunk))), chunk)
            found.update((key, (occurred, received)) for key, occurred, received in rows)
        return found

    async def reported_statuses(self, message_ids: Sequence[str]) -> dict[str, str]:
        """The furthest status (records.later_status) the bot API or reconciliation reported per message id."""
        ids = list(dict.fromkeys(message_ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for message_id, status in await self.query(STATUS_REPORTS.format(marks=", ".join("?" * len(chunk))), chunk):
                furthest = later_status(found.get(message_id), status if isinstance(status, str) else None)
                if furthest:
                    found[message_id] = furthest
        return found

    async def conversations_of_phone(self, phone: str) -> list[str]:
        return [row[0] for row in await self.query(CONVERSATIONS_OF_PHONE, (phone,))]

    async def events_keyed(self, prefix: str) -> list[StoredEvent]:
        """The events whose dedup key starts with `prefix` (non-empty), in id order, through the key's index."""
        after = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # keys compare as UTF-8 bytes, in code point order
        return [StoredEvent(*row) for row in await self.query(EVENTS_BY_KEY_RANGE, (prefix, after))]
