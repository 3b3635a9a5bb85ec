"""An in-memory sink: the Sink port over plain dicts, with failures and counters for tests.

Built as procrastinate's InMemoryConnector is: the port (daemon.sinks.base.Sink) implemented without
I/O and shipped with the package, and one contract suite (tests/integration/test_sink_contract.py)
run against it and the real adapters. Its rows follow PostgresSink's statements rule for rule, through
the same records functions (map_events, merged_interactions, later_status, conversation_status):
deliveries are idempotent and order-free, an interaction's status never moves back, message counts
and spans are computed from the interactions, and a batch is written whole or not at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from daemon.events import StoredEvent
from daemon.records import (
    ConversationTouch,
    ConversationUpdate,
    EscalationRow,
    EscalationUpdate,
    InteractionRow,
    Records,
    StatusChange,
    conversation_status,
    map_events,
    merged_interactions,
)
from daemon.sinks.base import PermanentError, RefusedError, SinkError, TransientError

BATCH_SIZE = 500  # the real sinks'
T = TypeVar("T")


@dataclass(frozen=True)
class Conversation:
    """A conversations row as PostgreSQL holds it; `status_change` is the status event it follows."""

    conversation_id: str
    customer_phone: str | None
    customer_name: str | None
    started_at: datetime
    last_activity: datetime
    metadata: dict[str, Any]
    status: str = "active"
    message_count: int = 0
    intent: str | None = None
    sentiment: str | None = None
    priority: str = "MEDIUM"
    assigned_agent: str | None = None
    tags: tuple[str, ...] = ()
    status_change: StatusChange | None = None


@dataclass(frozen=True)
class Escalation(EscalationRow):
    resolved_at: datetime | None = None


@dataclass
class Tables:
    """What a memory sink holds: the raw events by dedup key, and the three tables by id."""

    events: dict[str, StoredEvent] = field(default_factory=dict)
    conversations: dict[str, Conversation] = field(default_factory=dict)
    interactions: dict[str, InteractionRow] = field(default_factory=dict)
    escalations: dict[str, Escalation] = field(default_factory=dict)

    @property
    def records(self) -> int:
        """Rows of the three tables (what an Airtable base counts against its cap)."""
        return len(self.conversations) + len(self.interactions) + len(self.escalations)

    def copy(self) -> Tables:
        """A copy to write a batch into (rows are frozen: copying the dicts is enough)."""
        return type(self)(dict(self.events), dict(self.conversations), dict(self.interactions), dict(self.escalations))

    def write(self, events: Sequence[StoredEvent], records: Records) -> None:
        """Write one batch in PostgresSink's order of statements."""
        for event in events:
            self.events.setdefault(event.dedup_key, event)
        for touch in records.conversations:
            self._touch(touch)
        for row in _statement_order(records.interactions):
            known = self.interactions.get(row.interaction_id)
            self.interactions[row.interaction_id] = row if known is None else merged_interactions([known, row])[0]
        for escalation in records.escalations:
            self.escalations.setdefault(escalation.escalation_id, Escalation(**vars(escalation)))
        for update in records.conversation_updates:
            self._update_conversation(update)
        for change in records.status_changes:
            following = self.conversations.get(change.conversation_id)
            if following is not None and (following.status_change is None or following.status_change.key < change.key):
                self.conversations[change.conversation_id] = replace(following, status_change=change)
        self._refresh({touch.conversation_id for touch in records.conversations})
        for escalation_update in records.escalation_updates:
            self._update_escalation(escalation_update)

    def _touch(self, touch: ConversationTouch) -> None:
        """Contact details follow the newest event; the span is the events' until _refresh finds interactions."""
        known = self.conversations.get(touch.conversation_id)
        if known is None:
            metadata = {
                key: value
                for key, value in (
                    ("bot_id", touch.bot_id),
                    ("contact_id", touch.contact_id),
                    ("service", touch.service),
                )
                if value is not None
            }
            self.conversations[touch.conversation_id] = Conversation(
                touch.conversation_id,
                touch.customer_phone,
                touch.customer_name,
                touch.first_at,
                touch.last_at,
                metadata,
            )
            return
        newer = touch.last_at >= known.last_activity
        self.conversations[touch.conversation_id] = replace(
            known,
            customer_phone=_first(touch.customer_phone, known.customer_phone)
            if newer
            else _first(known.customer_phone, touch.customer_phone),
            customer_name=_first(touch.customer_name, known.customer_name)
            if newer
            else _first(known.customer_name, touch.customer_name),
            started_at=min(known.started_at, touch.first_at),
            last_activity=max(known.last_activity, touch.last_at),
        )

    def _update_conversation(self, update: ConversationUpdate) -> None:
        known = self.conversations.get(update.conversation_id)
        if known is None:
            return
        self.conversations[update.conversation_id] = replace(
            known,
            intent=_first(update.intent, known.intent),
            sentiment=_first(update.sentiment, known.sentiment),
            priority=_first(update.priority, known.priority),
            assigned_agent=_first(update.assigned_agent, known.assigned_agent),
            tags=_first(update.tags, known.tags),
            metadata={**known.metadata, **(update.metadata or {})},
        )

    def _refresh(self, conversation_ids: set[str]) -> None:
        """Counts, spans and status from the interactions, never incremented: replays cannot skew them."""
        times: dict[str, list[datetime]] = {conversation_id: [] for conversation_id in conversation_ids}
        for row in self.interactions.values():
            if row.conversation_id in times:
                times[row.conversation_id].append(row.occurred_at)
        for conversation_id, moments in times.items():
            known = self.conversations[conversation_id]
            change = known.status_change
            last = max(moments, default=None)
            self.conversations[conversation_id] = replace(
                known,
                message_count=len(moments),
                started_at=min(moments, default=known.started_at),
                last_activity=last or known.last_activity,
                status=conversation_status(change.title if change else None, change.at if change else None, last),
            )

    def _update_escalation(self, update: EscalationUpdate) -> None:
        known = self.escalations.get(update.escalation_id)
        if known is None:  # as PostgresSink: refused, it would change nothing
            raise PermanentError(
                f"escalation {update.escalation_id!r} is not in the sink, so its update would change nothing"
            )
        self.escalations[update.escalation_id] = replace(
            known,
            status=_first(update.status, known.status),
            assigned_agent=_first(update.assigned_agent, known.assigned_agent),
            resolved_at=_first(update.resolved_at, known.resolved_at),
            notes=_first(update.notes, known.notes),
        )


class MemorySink:
    """A Sink that keeps its rows in `tables`; failures are injected and calls counted for tests.

    `refusal` is what an event in `refused` raises: PermanentError as PostgreSQL refuses a value,
    RefusedError as Airtable does (the delivery loop then tells a bad value from a full base).
    `max_records` caps the records of the three tables as an Airtable plan does: a batch that would
    create records past it is refused whole (RefusedError, BASE_RECORD_LIMIT_EXCEEDED), one that
    creates none still passes.
    """

    def __init__(
        self,
        name: str = "memory",
        batch_size: int = BATCH_SIZE,
        *,
        refusal: type[PermanentError] = PermanentError,
        max_records: int | None = None,
    ):
        self.name = name
        self.batch_size = batch_size
        self.tables = Tables()
        self.failures: list[SinkError] = []  # raised by the next deliveries, one each, in order
        self.refused: set[str] = set()  # dedup keys of events refused for good
        self.refusal = refusal
        self.down: TransientError | None = None  # while set, deliver and check raise it (SetupError too)
        self.max_records = max_records
        self.calls = 0  # deliveries attempted, failed ones included
        self.batch_sizes: list[int] = []  # events per delivery attempted
        self.checks = 0
        self.closes = 0
        self.accepted: Counter[str] = Counter()  # dedup key -> deliveries that wrote it

    @property
    def records(self) -> int:
        return self.tables.records

    @property
    def closed(self) -> bool:
        return self.closes > 0

    async def deliver(self, events: Sequence[StoredEvent]) -> int:
        """Write the batch whole, or raise; how many records it created."""
        self.calls += 1
        self.batch_sizes.append(len(events))
        self._answer()
        if self.failures:
            raise self.failures.pop(0)
        refused = next((event for event in events if event.dedup_key in self.refused), None)
        if refused is not None:
            raise self.refusal(f"{self.name} refused the value of event {refused.dedup_key}")
        staged = self.tables.copy()
        staged.write(events, map_events(events))
        created = staged.records - self.tables.records
        if self.max_records is not None and created and staged.records > self.max_records:
            raise RefusedError(
                f"HTTP 422 BASE_RECORD_LIMIT_EXCEEDED: {self.name} is at its plan's maximum of "
                f"{self.max_records} records"
            )
        self.tables = staged
        self.accepted.update(event.dedup_key for event in events)
        return created

    async def check(self) -> None:
        self.checks += 1
        self._answer()

    async def close(self) -> None:
        self.closes += 1

    def _answer(self) -> None:
        if self.closed:  # the daemon must never use a sink it closed (SIGHUP replaces sinks under their workers)
            raise RuntimeError(f"{self.name} used after close()")
        if self.down is not None:
            raise self.down


def _statement_order(rows: Iterable[InteractionRow]) -> list[InteractionRow]:
    """Webhook rows, then reported statuses, then the bot API's, in batch order within each: PostgresSink's."""
    return sorted(rows, key=lambda row: (row.from_api, row.reported))  # False first; sorted() is stable


def _first(value: T | None, fallback: T) -> T:
    return fallback if value is None else value
