"""[airtable] retention_days: room in the base (a plan caps its records) by deleting what is old there
and that PostgreSQL holds.

Interactions older than the cutoff (their Timestamp) go first, then escalations that are resolved, were
created and resolved before the cutoff and whose conversation has had no activity since, then
conversations whose LastActivity is older too and that no kept escalation refers to. A record is
deleted only when PostgreSQL holds the row it copies (looked up by its key), so Airtable's copy is never
the last one; a conversation PostgreSQL saw active since the cutoff stays (its newest messages may still
wait for delivery). The cutoff is taken at the start of its UTC day, which a date field without time
compares alike. Ids are gathered a table at a time before anything of that table is deleted (deleting
under a listing's offset could skip records), and every request waits for `spare()`: deliveries go
first. A field the purge reads that the base lacks, or that the writes leave out (a delivery warning
only: it holds the operators' values, not ours), keeps what would be judged by it, with a log line,
rather than failing every run on a formula Airtable refuses.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, date, datetime
from typing import Any

from loguru import logger

from daemon.sinks.airtable_client import (
    RECORDS_PER_REQUEST,
    AirtableClient,
    before_formula,
    pages,
    patiently,
    read_plan,
)
from daemon.sinks.airtable_fields import DATED_BY, FIELD_OF, KEYS, BaseNames
from daemon.sinks.airtable_schema import BasePlan
from daemon.sinks.postgres_rows import PostgresRows

ORDER = ("interactions", "escalations", "conversations")  # a conversation goes after what refers to it
OLD_BY = {kind: DATED_BY[kind] for kind in ("interactions", "conversations")}
# An escalation's fields the purge reads: its conversation, and what decides whether it goes.
CONVERSATION, CREATED, STATUS, RESOLVED_AT = (
    FIELD_OF["escalations"][column] for column in ("conversation_id", "created_at", "status", "resolved_at")
)
DECIDES_ESCALATION = (CREATED, STATUS, RESOLVED_AT)
ESCALATION_FIELDS = (CONVERSATION, *DECIDES_ESCALATION)
RESOLVED = "resolved"

Delete = Callable[[str, list[str]], Awaitable[None]]


def day_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def _moment(value: Any) -> datetime | None:
    """A date or date-time cell (or PostgreSQL's ISO text) as a moment; None when it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _older(value: Any, before: datetime) -> bool:
    moment = _moment(value)
    return moment is not None and moment < before


def _after(value: Any, before: datetime) -> bool:
    moment = _moment(value)
    return moment is not None and moment >= before


def _lacking(plan: BasePlan, names: BaseNames, kind: str, fields: tuple[str, ...]) -> dict[str, str]:
    """Those of our fields the purge cannot read from the table of `kind`, and why: missing, or left out of
    the writes (then it holds the operators' values, not ours)."""
    return {name: why for name in fields if (why := plan.unselectable(names, kind, name))}


def _gaps(plan: BasePlan, names: BaseNames, kind: str, fields: tuple[str, ...]) -> list[str]:
    """Why the purge cannot read these fields of `kind`: the table, its key, or the fields."""
    if kind in plan.missing_tables:
        return [f"table {names[kind]} is missing"]
    if kind not in plan.tables:  # its key is missing or not text: the plan's problems say which
        return [f"{names[kind]}.{names.field(kind, KEYS[kind])} cannot be read as its key"]
    return list(_lacking(plan, names, kind, fields).values())


def _skipped(table: str, gaps: list[str], consequence: str = "") -> None:
    logger.warning(
        "airtable retention: {}: every record of {} is kept{} (`chatledger airtable check` tells more)",
        "; ".join(gaps),
        table,
        consequence,
    )


class _Purge:
    """One run: what it deleted per table, and the lookups it shares between tables."""

    def __init__(
        self,
        client: AirtableClient,
        names: BaseNames,
        plan: BasePlan,
        postgres: Callable[[], AbstractAsyncContextManager[PostgresRows]],
        before: datetime,
        spare: Callable[[], Awaitable[None]],
        delete: Delete,
    ):
        self.client, self.names, self.plan, self.postgres = client, names, plan, postgres
        self.before, self.spare, self._delete = before, spare, delete
        self.deleted = {kind: 0 for kind in ORDER}

    def field(self, kind: str, logical: str) -> str:
        return self.names.field(kind, logical)

    async def listing(self, kind: str, formula: str | None, logical: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """Record id -> its cells under our names, for the records of `kind` matching `formula` that have a key."""
        key = self.field(kind, KEYS[kind])
        found: dict[str, dict[str, Any]] = {}
        async for page in pages(
            self.client,
            self.names[kind],
            formula,
            fields=[key, *(self.field(kind, f) for f in logical)],
            before_each=self.spare,
        ):
            for record in page:
                cells = self.names.logical(kind, record.get("fields", {}))
                if cells.get(KEYS[kind]):
                    found[record["id"]] = cells
        return found

    async def old(self, kind: str) -> dict[str, dict[str, Any]] | None:
        """The records of `kind` older than the cutoff by OLD_BY; None when the base lacks what says so."""
        gaps = _gaps(self.plan, self.names, kind, (OLD_BY[kind],))
        if gaps:
            _skipped(self.names[kind], gaps)
            return None
        return await self.listing(kind, before_formula(self.field(kind, OLD_BY[kind]), self.before), ())

    async def held(self, kind: str, keys: set[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        async with self.postgres() as pg:
            return await pg.existing(kind, list(keys))

    async def remove(self, kind: str, record_ids: list[str]) -> None:
        for start in range(0, len(record_ids), RECORDS_PER_REQUEST):
            chunk = record_ids[start : start + RECORDS_PER_REQUEST]
            await self.spare()
            await patiently(lambda: self._delete(self.names[kind], chunk))
            self.deleted[kind] += len(chunk)

    def told(self, kind: str, kept: int, why: str) -> None:
        if not self.deleted[kind] and not kept:
            return
        logger.info(
            "airtable retention: {} {} older than {} deleted{}",
            self.deleted[kind],
            self.names[kind],
            self.before.date(),
            f", {kept} kept ({why})" if kept else "",
        )

    async def interactions(self) -> None:
        found = await self.old("interactions")
        if not found:
            return
        held = await self.held("interactions", {cells[KEYS["interactions"]] for cells in found.values()})
        doomed = [record_id for record_id, cells in found.items() if cells[KEYS["interactions"]] in held]
        await self.remove("interactions", doomed)
        self.told("interactions", len(found) - len(doomed), "PostgreSQL does not hold them")

    async def every_escalation(self) -> dict[str, dict[str, Any]] | None:
        """Every escalation, not only old ones (a kept one keeps its conversation); None when they cannot be
        read by their key."""
        if "escalations" in self.plan.missing_tables:
            return {}
        if "escalations" not in self.plan.tables:
            _skipped(
                self.names["escalations"],
                _gaps(self.plan, self.names, "escalations", ()),
                ", and conversations too (which of them have escalations cannot be told)",
            )
            return None
        lacking = _lacking(self.plan, self.names, "escalations", ESCALATION_FIELDS)
        if any(name in lacking for name in DECIDES_ESCALATION):
            _skipped(self.names["escalations"], _gaps(self.plan, self.names, "escalations", DECIDES_ESCALATION))
        return await self.listing("escalations", None, tuple(f for f in ESCALATION_FIELDS if f not in lacking))

    async def escalations_and_conversations(self) -> None:
        conversations = await self.old("conversations")
        escalations = await self.every_escalation()
        if escalations is None:
            return
        undecidable = _lacking(self.plan, self.names, "escalations", DECIDES_ESCALATION)
        held_escalations = await self.held("escalations", {c[KEYS["escalations"]] for c in escalations.values()})

        def conversation_of(cells: dict[str, Any]) -> str | None:
            row = held_escalations.get(cells[KEYS["escalations"]]) or {}
            return cells.get(CONVERSATION) or row.get("conversation_id")

        candidates = {c[KEYS["conversations"]] for c in (conversations or {}).values()}
        activity = await self.held(
            "conversations",
            candidates | {conversation for cells in escalations.values() if (conversation := conversation_of(cells))},
        )

        def quiet(conversation: str | None) -> bool:
            if conversation is None:
                return True
            row = activity.get(conversation)
            return row is not None and not _after(row.get("last_activity"), self.before)

        doomed, kept_for = [], set()
        for record_id, cells in escalations.items():
            if (
                not undecidable
                and cells[KEYS["escalations"]] in held_escalations
                and _older(cells.get(CREATED), self.before)
                and str(cells.get(STATUS, "")).strip().lower() == RESOLVED
                and _older(cells.get(RESOLVED_AT), self.before)
                and quiet(conversation_of(cells))
            ):
                doomed.append(record_id)
            elif conversation_of(cells):
                kept_for.add(conversation_of(cells))
        await self.remove("escalations", doomed)
        old_escalations = sum(1 for cells in escalations.values() if _older(cells.get(CREATED), self.before))
        self.told(
            "escalations",
            old_escalations - len(doomed),
            "open, resolved since, their conversation active since, or PostgreSQL does not hold them",
        )
        if not conversations:
            return
        doomed = [
            record_id
            for record_id, cells in conversations.items()
            if (conversation := cells[KEYS["conversations"]]) in activity
            and quiet(conversation)
            and conversation not in kept_for
        ]
        await self.remove("conversations", doomed)
        self.told(
            "conversations",
            len(conversations) - len(doomed),
            "an escalation kept, active since, or PostgreSQL does not hold them",
        )


async def purge_airtable(
    client: AirtableClient,
    names: BaseNames,
    postgres: Callable[[], AbstractAsyncContextManager[PostgresRows]],
    cutoff: datetime,
    spare: Callable[[], Awaitable[None]],
    *,
    plan: BasePlan | None = None,
    delete: Delete | None = None,
) -> dict[str, int]:
    """Delete the records older than `cutoff` that PostgreSQL holds; how many, per table. `plan`: the base's
    (read now when not given: a field removed since the last look must not fail the run); `delete`: how a
    chunk of records is deleted (the sink's keeps its records count)."""
    names = BaseNames.of(names)
    if plan is None:
        await spare()
        plan = await patiently(lambda: read_plan(client, names, probe=False))
    purge = _Purge(client, names, plan, postgres, day_start(cutoff), spare, delete or client.delete)
    await purge.interactions()
    await purge.escalations_and_conversations()
    return purge.deleted


class RetentionSchedule:
    """When the purge runs: first `first_delay` after start, then `interval` after each run; sooner while
    the base is under pressure (blocked at its cap, records_high), but never twice within `min_gap`: when the
    pressure appears, then again only once the cutoff has moved to another day or the last run failed
    (another run on the same day's cutoff finds nothing new)."""

    def __init__(
        self, first_delay: float, interval: float, min_gap: float, clock: Callable[[], float] = time.monotonic
    ):
        self.interval, self.min_gap, self._clock = interval, min_gap, clock
        self._next = clock() + first_delay
        self._last: float | None = None
        self._day: date | None = None
        self._failed = False
        self._pressed = False
        self._new_pressure = False

    def due(self, pressure: bool, day: date) -> bool:
        """Whether a run should start now; `day`: the day the cutoff falls on now."""
        now = self._clock()
        if pressure and not self._pressed:
            self._new_pressure = True
        self._pressed = pressure
        if now >= self._next:
            return True
        if not pressure or (self._last is not None and now - self._last < self.min_gap):
            return False
        return self._new_pressure or self._failed or day != self._day

    def started(self, day: date) -> None:
        self._last = self._clock()
        self._next = self._last + self.interval
        self._day = day
        self._new_pressure = False

    def finished(self, ok: bool) -> None:
        self._failed = not ok
