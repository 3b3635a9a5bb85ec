"""Reads of one conversation, from PostgreSQL, else the journal, else Airtable: the bot API's GETs and
`chatledger show` ask the same functions, and learn which store answered."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.records import api_update_prefix, iso, map_events, merged_interactions, parse_tags
from daemon.sinks.airtable_fields import FIELD_OF, KEYS, BaseNames
from daemon.sinks.base import SinkError

READ_LIMIT = 1000  # the API's most interactions a read
EVENTS_PER_INTERACTION = 4  # the journal reads this many events per interaction asked (statuses, PATCHes between)
# A reader is waiting (the bot, an operator): a transient Airtable failure is tried again twice (1 s, then 2 s
# later; a 429 waits out its lockout), not for the minutes a background job may wait.
AIRTABLE_ATTEMPTS = 3


def _answers(kind: str, names: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str, str], ...]:
    """(PostgreSQL column, answer name, our Airtable field, as the field table names it) of what reads return."""
    return tuple((column, name, FIELD_OF[kind][column]) for column, name in names)


CONVERSATION_FIELDS = _answers(
    "conversations",
    (
        ("conversation_id", "conversationId"),
        ("customer_phone", "customerPhone"),
        ("customer_name", "customerName"),
        ("status", "status"),
        ("started_at", "startedAt"),
        ("last_activity", "lastActivity"),
        ("message_count", "messageCount"),
        ("intent", "intent"),
        ("sentiment", "sentiment"),
        ("priority", "priority"),
        ("assigned_agent", "assignedAgent"),
        ("tags", "tags"),
        ("metadata", "metadata"),
    ),
)
INTERACTION_FIELDS = _answers(
    "interactions",
    (
        ("interaction_id", "id"),
        ("conversation_id", "conversationId"),
        ("message_id", "messageId"),
        ("direction", "direction"),
        ("content", "content"),
        ("intent", "intent"),
        ("response", "response"),
        ("processing_time_ms", "processingTime"),
        ("status", "status"),
        ("error_message", "errorMessage"),
        ("occurred_at", "timestamp"),
    ),
)
ESCALATION_FIELDS = _answers(
    "escalations",
    (
        ("escalation_id", "id"),
        ("ticket_id", "ticketId"),
        ("conversation_id", "conversationId"),
        ("reason", "reason"),
        ("priority", "priority"),
        ("status", "status"),
        ("customer_phone", "customerPhone"),
        ("assigned_agent", "assignedAgent"),
        ("created_at", "createdAt"),
        ("resolved_at", "resolvedAt"),
        ("notes", "notes"),
    ),
)
FIELDS = {"conversations": CONVERSATION_FIELDS, "interactions": INTERACTION_FIELDS, "escalations": ESCALATION_FIELDS}
FROM_POSTGRES = {kind: {column: name for column, name, _ in fields} for kind, fields in FIELDS.items()}
FROM_AIRTABLE = {kind: {cell: name for _, name, cell in fields} for kind, fields in FIELDS.items()}


@dataclass
class Stores:
    """How the reads reach the stores: `postgres` None and `airtable()` None for a store not configured,
    `journal` None for a journal this command could not open."""

    journal: Any  # a Journal, or a JournalReader beside one
    postgres: Callable[[], Any] | None  # -> async context manager of PostgresRows
    airtable: Callable[[], tuple[Any, dict[str, str]] | None]


class NotAsked(SinkError):
    """A store that cannot answer this question, and why (said to the reader, not only logged)."""


@dataclass
class Answer:
    """What the first store that knew found (source None: none did); the stores that failed, and those
    that could not be asked, in words."""

    source: str | None = None
    found: Any = None
    problems: list[str] = field(default_factory=list)
    not_asked: list[str] = field(default_factory=list)


Read = Callable[..., Awaitable[Any]]


async def first_answer(
    stores: Stores, from_postgres: Read, from_journal: Read, from_airtable: Read, down: dict[str, str] | None = None
) -> Answer:
    """The first store that answers with something: PostgreSQL, the journal, Airtable. `down` holds the
    stores that failed earlier in the same command (not asked again: a dead host costs its timeout once)
    and takes those failing now."""
    down = {} if down is None else down
    answer = Answer()

    def found_in(source: str, found: Any) -> Answer:
        answer.source, answer.found, answer.problems = source, found, list(down.values())
        return answer

    if stores.postgres is not None and "postgres" not in down:
        try:
            async with stores.postgres() as pg:
                found = await from_postgres(pg)
            if found:
                return found_in("postgres", found)
        except SinkError as exc:
            down["postgres"] = f"postgres: {exc}"
    if stores.journal is not None and "journal" not in down:
        try:
            found = await from_journal(stores.journal)
            if found:
                return found_in("journal", found)
        except sqlite3.Error as exc:  # damaged while running: the other stores may still know
            down["journal"] = f"journal: cannot be read ({type(exc).__name__}: {exc})"
    airtable = stores.airtable() if "airtable" not in down else None
    if airtable is not None:
        try:
            found = await from_airtable(*airtable)
            if found:
                return found_in("airtable", found)
        except NotAsked as exc:
            answer.not_asked.append(f"Airtable was not asked: {exc}")
        except SinkError as exc:
            down["airtable"] = f"airtable: {exc}"
    answer.problems = list(down.values())
    return answer


# -- what each store holds, as the answers give it ---------------------------------------------------


def _renamed(row: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {out: row.get(name) for name, out in names.items()}


def _from_airtable(cells: dict[str, Any], kind: str) -> dict[str, Any]:
    """A record's values (under our field names) as an answer."""
    out = _renamed(cells, FROM_AIRTABLE[kind])
    if "tags" in out:
        out["tags"] = out["tags"] if isinstance(out["tags"], list) else parse_tags(out["tags"])
    if isinstance(out.get("metadata"), str):
        try:
            out["metadata"] = json.loads(out["metadata"])
        except ValueError:
            pass
    return out


async def airtable_records_of(
    client: Any, tables: dict[str, str], kind: str, conversation_id: str, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit` records of one conversation as the values chatledger wrote, under our field names
    (the base's plan maps the names of [airtable.fields] and undoes each field type's form)."""
    from daemon.sinks.airtable_client import current_plan, equals_formula, pages
    from daemon.sinks.airtable_schema import read_back

    names = BaseNames.of(tables)
    plan = await current_plan(client, names, AIRTABLE_ATTEMPTS)
    why = plan.unselectable(names, kind, FIELD_OF[kind]["conversation_id"])
    if why:
        fix = "; `chatledger airtable init` creates it" if why.endswith(" is missing") else ""
        raise NotAsked(f"{why}, so {kind} cannot be selected by conversation{fix}")
    rows: list[dict[str, Any]] = []
    formula = equals_formula(names.field_for(kind, "conversation_id"), conversation_id)
    async for page in pages(client, names[kind], formula, attempts=AIRTABLE_ATTEMPTS):
        rows += [read_back(plan, names, kind, record.get("fields", {})) for record in page]
        if len(rows) >= limit:
            break
    return rows[:limit]


def _journal_events(limit: int) -> int:
    return EVENTS_PER_INTERACTION * max(limit, READ_LIMIT)


async def _journal_conversation(
    journal: Any, conversation_id: str, events: list[Any] | None = None
) -> dict[str, Any] | None:
    """The journal's record of the conversation; with its events, what the bot API set on it too."""
    state = (await journal.conversations([conversation_id])).get(conversation_id)
    if state is None:
        return None
    out: dict[str, Any] = {
        "conversationId": state.conversation_id,
        "customerPhone": state.phone,
        "customerName": state.name,
        "status": state.status,
        "startedAt": state.started_at,
        "lastActivity": state.last_activity,
        "messageCount": state.message_count,
    }
    if events is None:
        return out
    out.update(intent=None, sentiment=None, priority=None, assignedAgent=None, tags=None, metadata=None)
    for update in map_events(events).conversation_updates:
        for name, value in (
            ("intent", update.intent),
            ("sentiment", update.sentiment),
            ("priority", update.priority),
            ("assignedAgent", update.assigned_agent),
            ("tags", list(update.tags) if update.tags is not None else None),
        ):
            if value is not None:
                out[name] = value
        if update.metadata is not None:
            out["metadata"] = {**(out["metadata"] or {}), **update.metadata}
    return out


def _journal_interactions(events: list[Any], limit: int) -> list[dict[str, Any]]:
    rows = sorted(
        merged_interactions(map_events(events).interactions), key=lambda r: (r.occurred_at, r.interaction_id)
    )[:limit]
    return [
        {
            "id": r.interaction_id,
            "conversationId": r.conversation_id,
            "messageId": r.message_id,
            "direction": r.direction,
            "content": r.content,
            "intent": r.intent,
            "response": r.response,
            "processingTime": r.processing_time_ms,
            "status": r.status,
            "errorMessage": r.error_message,
            "timestamp": iso(r.occurred_at),
        }
        for r in rows
    ]


async def _journal_escalations(journal: Any, events: list[Any], limit: int) -> list[dict[str, Any]]:
    """The conversation's escalations with their PATCHes applied (a PATCH names only the escalation, so it
    is found by its key)."""
    found: dict[str, dict[str, Any]] = {}
    for row in map_events(events).escalations:
        found[row.escalation_id] = {
            "id": row.escalation_id,
            "ticketId": row.ticket_id,
            "conversationId": row.conversation_id,
            "reason": row.reason,
            "priority": row.priority,
            "status": row.status,
            "customerPhone": row.customer_phone,
            "assignedAgent": row.assigned_agent,
            "createdAt": iso(row.created_at),
            "resolvedAt": None,
            "notes": row.notes,
        }
    for escalation_id, out in found.items():
        patches = await journal.events_keyed(api_update_prefix("escalation", escalation_id))
        for update in map_events(patches).escalation_updates:
            if update.escalation_id != escalation_id:  # an id this one's key prefix also covers
                continue
            for name, value in (
                ("status", update.status),
                ("assignedAgent", update.assigned_agent),
                ("resolvedAt", iso(update.resolved_at) if update.resolved_at else None),
                ("notes", update.notes),
            ):
                if value is not None:
                    out[name] = value
    return sorted(found.values(), key=lambda e: (e["createdAt"], e["id"]))[:limit]


async def _airtable_conversation(client: Any, tables: dict[str, str], conversation_id: str) -> dict[str, Any] | None:
    rows = await airtable_records_of(client, tables, "conversations", conversation_id, 1)
    return _from_airtable(rows[0], "conversations") if rows else None


async def _airtable_list(
    client: Any, tables: dict[str, str], kind: str, conversation_id: str, limit: int, time: str
) -> list[dict[str, Any]]:
    rows = [
        _from_airtable(row, kind) for row in await airtable_records_of(client, tables, kind, conversation_id, limit)
    ]
    return sorted(rows, key=lambda r: (r.get(time) or "", r.get("id") or ""))


# -- the reads -------------------------------------------------------------------------------------


async def conversation(stores: Stores, conversation_id: str, down: dict[str, str] | None = None) -> Answer:
    """The conversation itself (GET /api/v1/conversations/{id})."""

    async def from_postgres(pg: Any) -> Any:
        found = await pg.existing("conversations", [conversation_id])
        return _renamed(found[conversation_id], FROM_POSTGRES["conversations"]) if found else None

    async def from_journal(journal: Any) -> Any:
        return await _journal_conversation(journal, conversation_id)

    async def from_airtable(client: Any, tables: dict[str, str]) -> Any:
        return await _airtable_conversation(client, tables, conversation_id)

    return await first_answer(stores, from_postgres, from_journal, from_airtable, down)


async def interactions(stores: Stores, conversation_id: str, limit: int, down: dict[str, str] | None = None) -> Answer:
    """Its first `limit` interactions, oldest first (GET /api/v1/conversations/{id}/interactions)."""

    async def from_postgres(pg: Any) -> Any:
        if not await pg.existing("conversations", [conversation_id]):
            return None
        return [
            _renamed(row, FROM_POSTGRES["interactions"]) for row in await pg.interactions_of(conversation_id, limit)
        ]

    async def from_journal(journal: Any) -> Any:
        events = await journal.events_of_conversation(conversation_id, _journal_events(limit))
        return _journal_interactions(events, limit) if events else None

    async def from_airtable(client: Any, tables: dict[str, str]) -> Any:
        return await _airtable_list(client, tables, "interactions", conversation_id, limit, "timestamp") or None

    return await first_answer(stores, from_postgres, from_journal, from_airtable, down)


async def whole(stores: Stores, conversation_id: str, limit: int, down: dict[str, str] | None = None) -> Answer:
    """The conversation with its first `limit` interactions and escalations, oldest first, all from the
    first store that knows it (`chatledger show`)."""

    async def from_postgres(pg: Any) -> Any:
        found = await pg.existing("conversations", [conversation_id])
        if not found:
            return None
        return {
            "conversation": _renamed(found[conversation_id], FROM_POSTGRES["conversations"]),
            "interactions": [
                _renamed(row, FROM_POSTGRES["interactions"]) for row in await pg.interactions_of(conversation_id, limit)
            ],
            "escalations": [
                _renamed(row, FROM_POSTGRES["escalations"]) for row in await pg.escalations_of(conversation_id, limit)
            ],
        }

    async def from_journal(journal: Any) -> Any:
        events = await journal.events_of_conversation(conversation_id, _journal_events(limit))
        if not events:  # purged: its record alone would show a conversation without its messages
            return None
        found = await _journal_conversation(journal, conversation_id, events)
        if found is None:
            return None
        return {
            "conversation": found,
            "interactions": _journal_interactions(events, limit),
            "escalations": await _journal_escalations(journal, events, limit),
        }

    async def from_airtable(client: Any, tables: dict[str, str]) -> Any:
        found = await _airtable_conversation(client, tables, conversation_id)
        if found is None:
            return None
        return {
            "conversation": found,
            "interactions": await _airtable_list(client, tables, "interactions", conversation_id, limit, "timestamp"),
            "escalations": await _airtable_list(client, tables, "escalations", conversation_id, limit, "createdAt"),
        }

    return await first_answer(stores, from_postgres, from_journal, from_airtable, down)


async def conversations_of_phone(stores: Stores, phone: str, down: dict[str, str]) -> tuple[list[str], list[str]]:
    """The ids of the conversations of `phone` (digits) PostgreSQL or the journal know, else Airtable; and
    why Airtable was not asked, when it could not be."""
    ids: list[str] = []
    if stores.postgres is not None and "postgres" not in down:
        try:
            async with stores.postgres() as pg:
                ids += await pg.conversations_of(phone)
        except SinkError as exc:
            down["postgres"] = f"postgres: {exc}"
    if stores.journal is not None and "journal" not in down:
        try:
            ids += [c for c in await stores.journal.conversations_of_phone(phone) if c not in ids]
        except sqlite3.Error as exc:
            down["journal"] = f"journal: cannot be read ({type(exc).__name__}: {exc})"
    airtable = stores.airtable() if not ids and "airtable" not in down else None
    if airtable is None:
        return ids, []
    try:
        return await _airtable_conversations_of_phone(*airtable, phone), []
    except NotAsked as exc:
        return ids, [f"Airtable was not asked: {exc}"]
    except SinkError as exc:
        down["airtable"] = f"airtable: {exc}"
        return ids, []


async def _airtable_conversations_of_phone(client: Any, tables: dict[str, str], phone: str) -> list[str]:
    from daemon.sinks.airtable_client import current_plan, pages, phone_formula
    from daemon.sinks.airtable_schema import read_back

    names = BaseNames.of(tables)
    plan = await current_plan(client, names, AIRTABLE_ATTEMPTS)
    why = plan.unselectable(names, "conversations", FIELD_OF["conversations"]["customer_phone"])
    if why:
        raise NotAsked(f"{why}, so conversations cannot be selected by phone")
    ids: list[str] = []
    async for page in pages(
        client,
        names["conversations"],
        phone_formula(names.field_for("conversations", "customer_phone"), phone),
        attempts=AIRTABLE_ATTEMPTS,
    ):
        for record in page:
            found = read_back(plan, names, "conversations", record.get("fields", {})).get(KEYS["conversations"])
            if found and found not in ids:
                ids.append(found)
    return ids
