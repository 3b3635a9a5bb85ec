"""Journaled events -> conversation, interaction and escalation rows (pure: no I/O).

Every id is derived from the event itself, never from an order or a counter, so delivering the
same events again, in any order and to any sink, yields the same rows:

- conversation_id = uuid5(NAMESPACE_URL, "chatledger:conversation:<bot_id>:<contact_id>"): one
  conversation per (bot, contact); without a contact id the phone stands in for it.
- interaction_id  = uuid5(NAMESPACE_URL, "chatledger:interaction:<dedup key>")
- escalation_id   = uuid5(NAMESPACE_URL, "chatledger:escalation:<dedup key>"), and its ticket_id is
  "ESC-" + the first 8 hex digits of that id, upper case.

A conversation's status follows the latest status event (by occurred-at, ties broken by dedup
key): open_chat -> escalated; unsubscribe or bot_block -> closed, unless a message came later,
which makes it active again. message_count, started_at and last_activity are computed from its
interactions, not incremented, so replays and out-of-order deliveries cannot skew them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from daemon.events import (
    API_CONVERSATION_UPDATE,
    API_ESCALATION,
    API_ESCALATION_UPDATE,
    API_INTERACTION,
    API_TITLES,
    DELIVERY_STATUS,
    MESSAGE_TITLES,
    StoredEvent,
    storable_text,
)

ESCALATING_TITLES = frozenset({"open_chat"})
CLOSING_TITLES = frozenset({"unsubscribe", "bot_block"})
STATUS_TITLES = ESCALATING_TITLES | CLOSING_TITLES
# The values the operators' Airtable Status field allows (sent/delivered/read/failed).
INTERACTION_STATUS = {"inbound": "delivered", "outbound": "sent"}
# An interaction's status only moves forward along this order, whoever reports it (the webhook, the bot
# API, SendPulse's API through reconciliation): "delivered" or "read" after "failed" means WhatsApp
# delivered it after all. PostgreSQL's statements are built from it (daemon.sinks.postgres).
STATUS_ORDER = ("sent", "failed", "delivered", "read")
# SendPulse's message `status` (its API is the only source of these) -> the interaction's.
SENDPULSE_STATUS = {3: "delivered", 4: "read", 6: "failed"}
ESCALATION_REASON = "live chat opened"
# A status set through the API acts as the status event that would explain it.
STATUS_AS_TITLE = {"escalated": "open_chat", "closed": "unsubscribe", "active": "api_active"}


@dataclass(frozen=True)
class ConversationTouch:
    """What one batch knows of a conversation: identity, contact details, the span of its events."""

    conversation_id: str
    bot_id: str | None
    contact_id: str | None
    service: str | None
    customer_phone: str | None
    customer_name: str | None
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True)
class InteractionRow:
    interaction_id: str
    conversation_id: str
    message_id: str | None
    direction: str
    content: str | None
    status: str
    customer_phone: str | None
    occurred_at: datetime
    dedup_key: str = ""  # the event it comes from
    intent: str | None = None  # the fields only the bot API knows
    response: str | None = None
    processing_time_ms: int | None = None
    error_message: str | None = None
    from_api: bool = False
    reported: bool = False  # a delivery status SendPulse's API reported (daemon.reconcile): only the status counts
    # the dedup key of the message event this row enriches or reports on (bot API and reported rows)
    message_key: str | None = None


@dataclass(frozen=True)
class EscalationRow:
    escalation_id: str
    ticket_id: str
    conversation_id: str
    reason: str | None
    priority: str
    status: str
    customer_phone: str | None
    created_at: datetime
    notes: str | None
    assigned_agent: str | None = None


@dataclass(frozen=True)
class EscalationUpdate:
    """PATCH /api/v1/escalations/{id}: only the fields given (None: unchanged)."""

    escalation_id: str
    status: str | None
    assigned_agent: str | None
    resolved_at: datetime | None
    notes: str | None


@dataclass(frozen=True)
class ConversationUpdate:
    """PATCH /api/v1/conversations/{id}: only the fields given (None: unchanged)."""

    conversation_id: str
    intent: str | None
    sentiment: str | None
    priority: str | None
    assigned_agent: str | None
    tags: tuple[str, ...] | None
    metadata: dict[str, Any] | None
    status: str | None


@dataclass(frozen=True)
class StatusChange:
    """The newest status event of a conversation within a batch; `key` orders status events."""

    conversation_id: str
    title: str
    at: datetime
    key: str


@dataclass
class Records:
    conversations: list[ConversationTouch] = field(default_factory=list)
    interactions: list[InteractionRow] = field(default_factory=list)
    escalations: list[EscalationRow] = field(default_factory=list)
    status_changes: list[StatusChange] = field(default_factory=list)
    escalation_updates: list[EscalationUpdate] = field(default_factory=list)
    conversation_updates: list[ConversationUpdate] = field(default_factory=list)


@dataclass(frozen=True)
class ConversationState:
    """The journal's own record of one conversation (every event it ever accepted, folded in)."""

    conversation_id: str
    bot_id: str | None
    contact_id: str | None
    service: str | None
    phone: str | None
    name: str | None
    first_event_at: str
    last_event_at: str
    first_message_at: str | None
    last_message_at: str | None
    message_count: int
    status_title: str | None
    status_at: str | None
    updated_at: str

    @property
    def started_at(self) -> str:
        return self.first_message_at or self.first_event_at

    @property
    def last_activity(self) -> str:
        return self.last_message_at or self.last_event_at

    @property
    def status(self) -> str:
        return conversation_status(
            self.status_title,
            parse_time(self.status_at) if self.status_at else None,
            parse_time(self.last_message_at) if self.last_message_at else None,
        )


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with milliseconds and Z: sortable as text, the format Airtable writes back."""
    if moment.tzinfo is UTC:  # intake's own times: two per event, the shortest way
        return moment.isoformat(timespec="milliseconds")[:-6] + "Z"
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def tags_text(tags: Iterable[str]) -> str:
    """Tags as Airtable's Tags text: comma-separated, readable and typeable by an operator."""
    return ", ".join(tags)


def parse_tags(text: str | None) -> list[str]:
    """Airtable's Tags text (comma-separated, or a JSON list) as a list of tags."""
    if not text or not text.strip():
        return []
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
            if isinstance(value, list):
                return [str(tag) for tag in value]
        except ValueError:
            pass
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def _id(kind: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"chatledger:{kind}:{name}"))


@lru_cache(maxsize=4096)  # intake asks it for every event, mostly of the same few hundred conversations
def conversation_id_for(bot_id: str | None, contact_id: str | None, phone: str | None) -> str | None:
    """The deterministic conversation id of (bot, contact); None when the event names no one."""
    who = contact_id or (f"phone:{phone}" if phone else None)
    if who is None:
        return None
    return _id("conversation", f"{bot_id or ''}:{who}")


def status_key(at: datetime, dedup_key: str) -> str:
    return f"{at.isoformat()}|{dedup_key}"


def conversation_status(status_title: str | None, status_at: datetime | None, last_message_at: datetime | None) -> str:
    """A conversation's status from its latest status event and its latest message."""
    if status_title in ESCALATING_TITLES:
        return "escalated"
    if status_title in CLOSING_TITLES and (
        last_message_at is None or (status_at is not None and last_message_at <= status_at)
    ):
        return "closed"
    return "active"


def clean_text(value: str | None) -> str | None:
    """Text every store takes (events.storable_text), None kept."""
    return None if value is None else storable_text(value)


def map_events(events: Iterable[StoredEvent]) -> Records:
    """Map a batch of journaled events to the rows both sinks write."""
    records = Records()
    touches: dict[str, ConversationTouch] = {}
    changes: dict[str, StatusChange] = {}
    for event in events:
        if event.title == API_ESCALATION_UPDATE:  # names an escalation, not a conversation
            _map_api(event, "", parse_time(event.occurred_at), records, changes)
            continue
        # the journal stored it at insert; a StoredEvent built elsewhere may not carry it
        conversation_id = event.conversation_id or conversation_id_for(event.bot_id, event.contact_id, event.phone)
        if conversation_id is None:
            continue  # nobody to attach it to: the raw event is still stored
        at = parse_time(event.occurred_at)
        _touch(touches, conversation_id, event, at)
        if event.title in API_TITLES:
            _map_api(event, conversation_id, at, records, changes)
            continue
        if event.title == DELIVERY_STATUS:
            records.interactions.append(_reported(event, conversation_id, at))
            continue
        direction = MESSAGE_TITLES.get(event.title)
        if direction is not None:
            records.interactions.append(
                InteractionRow(
                    interaction_id=interaction_id_for(event.dedup_key),
                    conversation_id=conversation_id,
                    message_id=event.message_id,
                    direction=direction,
                    content=clean_text(event.text),
                    status=INTERACTION_STATUS[direction],
                    customer_phone=event.phone,
                    occurred_at=at,
                    dedup_key=event.dedup_key,
                )
            )
        if event.title in STATUS_TITLES:
            change = StatusChange(conversation_id, event.title, at, status_key(at, event.dedup_key))
            known = changes.get(conversation_id)
            if known is None or known.key < change.key:
                changes[conversation_id] = change
        if event.title in ESCALATING_TITLES:
            escalation_id = _id("escalation", event.dedup_key)
            records.escalations.append(
                EscalationRow(
                    escalation_id=escalation_id,
                    ticket_id=ticket_for(escalation_id),
                    conversation_id=conversation_id,
                    reason=ESCALATION_REASON,
                    priority="MEDIUM",
                    status="pending",
                    customer_phone=event.phone,
                    created_at=at,
                    notes=clean_text(event.text),
                )
            )
    records.conversations = list(touches.values())
    records.status_changes = list(changes.values())
    return records


def interaction_id_for(dedup_key: str) -> str:
    return _id("interaction", dedup_key)


def message_key(message_id: str, direction: str) -> str:
    """The dedup key of the webhook event of a SendPulse message (daemon.events.dedup_key)."""
    title = "incoming_message" if direction == "inbound" else "outgoing_message"
    return f"msg:{title}:{message_id}"


def api_interaction_id(given: str, message_id: str | None, direction: str) -> str:
    """A bot-posted interaction about a SendPulse message is the webhook's interaction of that message
    (one row, enriched); without a message id it keeps the id the bot gave."""
    if not message_id:
        return given
    return interaction_id_for(message_key(message_id, direction))


def merged_interactions(rows: Iterable[InteractionRow]) -> list[InteractionRow]:
    """One row per interaction id from rows in journal order, as PostgreSQL folds them: the message's
    time and (unless the bot gave one) text, the bot's fields over them, whichever came first."""
    merged: dict[str, InteractionRow] = {}
    for row in rows:
        known = merged.get(row.interaction_id)
        if known is None:
            merged[row.interaction_id] = row
        elif row.reported:
            merged[row.interaction_id] = replace(known, status=_later(known.status, row.status))
        elif row.from_api:
            merged[row.interaction_id] = replace(
                known,
                content=_given(row.content, known.content),
                status=_later(known.status, row.status),
                customer_phone=_given(known.customer_phone, row.customer_phone),
                intent=_given(row.intent, known.intent),
                response=_given(row.response, known.response),
                processing_time_ms=_given(row.processing_time_ms, known.processing_time_ms),
                error_message=_given(row.error_message, known.error_message),
            )
        else:
            merged[row.interaction_id] = replace(
                known,
                occurred_at=row.occurred_at,
                content=_given(known.content, row.content),
                status=_later(known.status, row.status),
            )
    return list(merged.values())


def status_rank(status: str | None) -> int:
    """Where a status stands in STATUS_ORDER; 0 for none or one outside it."""
    return STATUS_ORDER.index(status) + 1 if status in STATUS_ORDER else 0


def later_status(*statuses: str | None) -> str | None:
    """The furthest of these statuses along STATUS_ORDER (the first of equals; None when all are None)."""
    given = [status for status in statuses if status]
    return max(given, key=status_rank) if given else None


def delivery_status_key(message_key: str, status: str) -> str:
    """The dedup key of a reported status: one event per message and status, whoever learns it again."""
    return f"status:{message_key}:{status}"


def _later(known: str, given: str) -> str:
    return later_status(known, given) or known


def _given(first: Any, second: Any) -> Any:
    return second if first is None else first


def api_update_prefix(kind: str, target_id: str) -> str:
    """How the dedup key of every PATCH of one escalation or conversation starts (daemon.api)."""
    return f"api:{kind}-update:{target_id}:"


def ticket_for(escalation_id: str) -> str:
    return "ESC-" + escalation_id.replace("-", "")[:8].upper()


def _optional_time(value: Any) -> datetime | None:
    return parse_time(value) if isinstance(value, str) and value else None


def _reported(event: StoredEvent, conversation_id: str, at: datetime) -> InteractionRow:
    """The row a status SendPulse reported makes: the message's own (as the API listed it), its status."""
    body = json.loads(event.raw)
    return InteractionRow(
        interaction_id=interaction_id_for(body["of"]),
        conversation_id=conversation_id,
        message_id=body.get("message_id"),
        direction=event.direction or "outbound",
        content=clean_text(event.text),
        status=body["status"],
        customer_phone=event.phone,
        occurred_at=at,
        dedup_key=event.dedup_key,
        reported=True,
        message_key=body["of"],
    )


def _map_api(
    event: StoredEvent, conversation_id: str, at: datetime, records: Records, changes: dict[str, StatusChange]
) -> None:
    body = json.loads(event.raw)
    if event.title == API_INTERACTION:
        direction = body["direction"]
        records.interactions.append(
            InteractionRow(
                interaction_id=api_interaction_id(body["id"], body.get("messageId"), direction),
                conversation_id=conversation_id,
                message_id=body.get("messageId"),
                direction=direction,
                content=clean_text(body.get("content")),
                status=body.get("status") or INTERACTION_STATUS[direction],
                customer_phone=event.phone,
                occurred_at=at,
                dedup_key=event.dedup_key,
                intent=clean_text(body.get("intent")),
                response=clean_text(body.get("response")),
                processing_time_ms=body.get("processingTime"),
                error_message=clean_text(body.get("errorMessage")),
                from_api=True,
                message_key=message_key(body["messageId"], direction) if body.get("messageId") else None,
            )
        )
    elif event.title == API_ESCALATION:
        records.escalations.append(
            EscalationRow(
                escalation_id=body["id"],
                ticket_id=body.get("ticketId") or ticket_for(_id("escalation", f"api:{body['id']}")),
                conversation_id=conversation_id,
                reason=clean_text(body.get("reason")),
                priority=body.get("priority") or "MEDIUM",
                status=body.get("status") or "pending",
                customer_phone=event.phone,
                created_at=at,
                notes=clean_text(body.get("notes")),
                assigned_agent=clean_text(body.get("assignedAgent")),
            )
        )
    elif event.title == API_ESCALATION_UPDATE:
        records.escalation_updates.append(
            EscalationUpdate(
                body["id"],
                body.get("status"),
                clean_text(body.get("assignedAgent")),
                _optional_time(body.get("resolvedAt")),
                clean_text(body.get("notes")),
            )
        )
    elif event.title == API_CONVERSATION_UPDATE:
        tags = body.get("tags")
        records.conversation_updates.append(
            ConversationUpdate(
                conversation_id,
                clean_text(body.get("intent")),
                clean_text(body.get("sentiment")),
                body.get("priority"),
                clean_text(body.get("assignedAgent")),
                tuple(tags) if tags is not None else None,
                body.get("metadata"),
                body.get("status"),
            )
        )
        if body.get("status"):
            change = StatusChange(conversation_id, STATUS_AS_TITLE[body["status"]], at, status_key(at, event.dedup_key))
            known = changes.get(conversation_id)
            if known is None or known.key < change.key:
                changes[conversation_id] = change


def _touch(touches: dict[str, ConversationTouch], conversation_id: str, event: StoredEvent, at: datetime) -> None:
    known = touches.get(conversation_id)
    if known is None:
        touches[conversation_id] = ConversationTouch(
            conversation_id,
            event.bot_id,
            event.contact_id,
            event.service,
            event.phone,
            clean_text(event.contact_name),
            at,
            at,
        )
        return
    newer = at >= known.last_at
    touches[conversation_id] = ConversationTouch(
        conversation_id,
        known.bot_id or event.bot_id,
        known.contact_id or event.contact_id,
        known.service or event.service,
        (event.phone or known.customer_phone) if newer else (known.customer_phone or event.phone),
        (clean_text(event.contact_name) or known.customer_name)
        if newer
        else (known.customer_name or clean_text(event.contact_name)),
        min(known.first_at, at),
        max(known.last_at, at),
    )
