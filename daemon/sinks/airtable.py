"""The Airtable sink: the same rows as PostgreSQL, upserted through airtable_client under the base's budget.

Every request goes through AirtableClient (pyairtable off the event loop, one token each, failures
classified). Writes are upserts keyed on each table's key (airtable_fields.KEYS), so a retry or a
replay never creates a duplicate. A row is built by PostgreSQL column and named by the field table
(airtable_fields); which field of the base each value goes to, and in which form, comes from the
base's own schema (airtable_schema's write plan).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loguru import logger

from daemon.events import StoredEvent
from daemon.ratelimit import MonthlyRequests, RequestBudget
from daemon.records import (
    INTERACTION_STATUS,
    ConversationState,
    InteractionRow,
    Records,
    iso,
    later_status,
    map_events,
    tags_text,
)
from daemon.sinks.airtable_client import (
    QUOTA_REASON,
    RECORDS_PER_REQUEST,
    SEVERITY,
    THREADS,
    AirtableClient,
    any_of_formula,
    pages,
    read_plan,
)
from daemon.sinks.airtable_fields import CLEARED, KEYS, TABLES, TITLES, BaseNames, as_fields
from daemon.sinks.airtable_schema import BasePlan, parse_field_mapping, plan_base
from daemon.sinks.base import PermanentError, RefusedError, SetupError, SinkDefaults

if TYPE_CHECKING:
    from daemon.config import AirtableConfig
    from daemon.snapshot import SinkStats

BATCH_SIZE = 500  # events per delivery: 50 interaction requests share the conversation upserts
SETUP_RETRY = 3600.0  # an unprepared base is fixed by an operator, who then runs `sync`: each check costs requests
PROBE_SHARE = 0.1  # a blocked base's probes spend at most this share of the month's remaining requests
CREATING_FIRST = ("interactions", "escalations", "conversations")  # the write most likely to create a record first


# -- mapping ---------------------------------------------------------------------------------------
# A row is given by PostgreSQL column, as the PostgreSQL sink writes it; the field table names its fields.


def _drop_empty(fields: dict[str, Any]) -> dict[str, Any]:
    """Leave out what we do not know, so that an upsert never clears what an operator typed."""
    return {k: v for k, v in fields.items() if v is not None and v != ""}


def _fields(kind: str, columns: dict[str, Any]) -> dict[str, Any]:
    """A row of `kind`, by PostgreSQL column, as the fields an upsert sends (what we know only)."""
    return as_fields(kind, _drop_empty(columns))


def conversation_fields(state: ConversationState) -> dict[str, Any]:
    metadata = _drop_empty({"bot_id": state.bot_id, "contact_id": state.contact_id, "service": state.service})
    return _fields(
        "conversations",
        {
            "conversation_id": state.conversation_id,
            "customer_phone": state.phone,
            "customer_name": state.name,
            "status": state.status,
            "started_at": state.started_at,
            "last_activity": state.last_activity,
            "message_count": state.message_count,
            "metadata": json.dumps(metadata, sort_keys=True),
            "created_at": state.first_event_at,
            "updated_at": state.updated_at,
        },
    )


def enriched_messages(records: Records) -> list[str]:
    """The dedup keys of the messages this delivery's bot API interactions enrich."""
    return [row.message_key for row in records.interactions if row.message_key]


def _interaction_times(
    row: InteractionRow, received: dict[str, str], messages: Mapping[str, tuple[str, str]]
) -> tuple[str, str]:
    """Timestamp and CreatedAt: an enrichment of a message the journal holds has that message's (as
    PostgreSQL keeps them); the bot's time stands in only until the message arrives."""
    if row.message_key:
        known = messages.get(row.message_key)
        if known is not None:
            return known
    return iso(row.occurred_at), received[row.dedup_key]


def _interaction_status(
    row: InteractionRow, messages: Mapping[str, tuple[str, str]], reports: Mapping[str, str]
) -> str | None:
    """The furthest status anyone reported for this interaction (as PostgreSQL keeps it, records.later_status):
    a replayed message or a late enrichment never moves it back."""
    status = later_status(row.status, reports.get(row.message_id) if row.message_id else None)
    if row.message_key and row.message_key in messages:  # the message's own webhook said this much
        status = later_status(status, INTERACTION_STATUS[row.direction])
    return status


def airtable_rows(
    events: Sequence[StoredEvent],
    records: Records,
    conversations: dict[str, ConversationState],
    messages: Mapping[str, tuple[str, str]] | None = None,
    reports: Mapping[str, str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The upserts one delivery makes, by table: one per interaction and escalation, and one per
    conversation touched (coalesced, with the journal's latest count and span, then what the bot API
    set on it), each record once. `messages`: (occurred_at, received_at) of the enriched messages
    (enriched_messages) the journal holds; `reports`: the furthest status the journal's bot API and
    reconciliation events report per message id (Journal.reported_statuses)."""
    received = {event.dedup_key: event.received_at for event in events}
    interactions = []
    for row in records.interactions:
        timestamp, created = _interaction_times(row, received, messages or {})
        interactions.append(
            _fields(
                "interactions",
                {
                    "interaction_id": row.interaction_id,
                    "conversation_id": row.conversation_id,
                    "message_id": row.message_id,
                    "direction": row.direction,
                    "content": row.content,
                    "status": _interaction_status(row, messages or {}, reports or {}),
                    "occurred_at": timestamp,
                    "created_at": created,
                    "intent": row.intent,
                    "response": row.response,
                    "processing_time_ms": row.processing_time_ms,
                    "error_message": row.error_message,
                },
            )
        )
    escalations = [
        _fields(
            "escalations",
            {
                "escalation_id": row.escalation_id,
                "ticket_id": row.ticket_id,
                "conversation_id": row.conversation_id,
                "reason": row.reason,
                "priority": row.priority,
                "status": row.status,
                "customer_phone": row.customer_phone,
                "created_at": iso(row.created_at),
                "notes": row.notes,
                "assigned_agent": row.assigned_agent,
            },
        )
        for row in records.escalations
    ]
    escalations += [
        _fields(
            "escalations",
            {
                "escalation_id": u.escalation_id,
                "status": u.status,
                "assigned_agent": u.assigned_agent,
                "resolved_at": iso(u.resolved_at) if u.resolved_at else None,
                "notes": u.notes,
            },
        )
        for u in records.escalation_updates
    ]
    touched = dict.fromkeys(touch.conversation_id for touch in records.conversations)
    conversation_rows = [conversation_fields(conversations[c]) for c in touched if c in conversations]
    conversation_rows += [
        _fields(
            "conversations",
            {
                "conversation_id": u.conversation_id,
                "intent": u.intent,
                "sentiment": u.sentiment,
                "priority": u.priority,
                "assigned_agent": u.assigned_agent,
                "tags": tags_text(u.tags) if u.tags is not None else None,
                "status": u.status,
            },
        )
        # tags emptied on purpose (PostgreSQL's become []) are cleared, not left out as unknown
        | (as_fields("conversations", {"tags": CLEARED}) if u.tags == () else {})
        for u in records.conversation_updates
    ]
    rows = {"conversations": conversation_rows, "interactions": interactions, "escalations": escalations}
    return {kind: _merged(rows[kind], KEYS[kind]) for kind in TABLES}


def _merged(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One record per key, later fields winning: an upsert request must not name a record twice."""
    out: dict[Any, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(row[key], {}).update(row)
    return list(out.values())


# -- the sink --------------------------------------------------------------------------------------


async def init_base(client: AirtableClient, names: dict[str, str]) -> list[str]:
    """Create the tables and fields chatledger writes that the base lacks, under the operator's names;
    what was done, in words.

    Existing tables and fields are never changed: a field of another type is written as its type
    allows, or left out (`chatledger airtable check` says which). A missing field that looks renamed is
    not created beside its twin: [airtable.fields] maps it."""
    names = BaseNames.of(names)
    schema = await client.schema()
    if schema is None:
        raise SetupError(
            "airtable init reads and changes the base's schema: give the token the scopes "
            "schema.bases:read and schema.bases:write (HTTP 403 on the metadata API)"
        )
    plan = plan_base(schema, names)
    done = []
    for kind, specs in TABLES.items():
        name = names[kind]
        if kind in plan.missing_tables:
            await client.create_table(name, [spec.config(names.field(kind, spec.name)) for spec in specs])
            done.append(f"created table {name} with {len(specs)} fields")
            continue
        for missing in plan.missing.get(kind, []):
            if missing.twin:
                done.append(
                    f"did not create {name}.{missing.name}: {missing.twin!r} looks like it renamed "
                    f"(map it under [airtable.fields], or create the field by hand)"
                )
                continue
            await client.create_field(plan.table_ids[kind], missing.spec.config(missing.name))
            done.append(f"created field {name}.{missing.name} ({missing.spec.type})")
    return done


async def set_up_base(client: AirtableClient, names: dict[str, str], create: bool) -> dict[str, Any]:
    """`chatledger airtable init` (create=True) or `check`: what was created, the differences that stop
    delivery (problems), the fields left out of the writes (warnings), the compatible differences
    (notes), and the [airtable.fields] mapping used."""
    names = BaseNames.of(names)
    done = (await init_base(client, names) or ["nothing to create"]) if create else []
    plan = await read_plan(client, names)
    mapping = {
        f"{TITLES[kind]}.{ours}": theirs for kind, fields in names.fields.items() for ours, theirs in fields.items()
    }
    return {"done": done, "problems": plan.problems, "warnings": plan.warnings, "notes": plan.notes, "fields": mapping}


@dataclass(frozen=True)
class BaseAccess:
    """The base as the operator commands and the reads reach it through a sink: its client (on the budget
    delivery spends), the tables' and fields' names, and deletions that the sink's records count follows."""

    client: AirtableClient
    names: BaseNames
    delete: Callable[[str, list[str]], Awaitable[None]]

    def reads(self) -> tuple[AirtableClient, BaseNames]:
        """What daemon.reads and the bot API read the base with."""
        return self.client, self.names


class AirtableSink(SinkDefaults):
    name = "airtable"
    batch_size = BATCH_SIZE
    # Requests are what a plan counts: no check while idle (a schema read every 30 s is 86,000 a month),
    # and deliveries linger until a request can carry RECORDS_PER_REQUEST records ([airtable] linger_s).
    idle_check_s = None
    linger_batch = RECORDS_PER_REQUEST
    linger_s = 0.0
    setup_retry_cap = SETUP_RETRY  # misconfigured: the backoff's cap (each retry reads the schema)

    def __init__(
        self,
        client: AirtableClient,
        tables: dict[str, str],
        conversations: Callable[[Sequence[str]], Awaitable[dict[str, ConversationState]]] | None,
        messages: Callable[[Sequence[str]], Awaitable[dict[str, tuple[str, str]]]] | None = None,
        reports: Callable[[Sequence[str]], Awaitable[dict[str, str]]] | None = None,
    ):
        self.client = client
        self.tables = BaseNames.of(tables)  # kind -> table name in the base, and the field names
        self._conversations = conversations  # None: a sink that only reads and deletes, never delivers
        self._messages = messages  # the journal's Journal.event_times: the times of the messages enriched
        self._reports = reports  # the journal's Journal.reported_statuses
        self._schema_ok = False
        self.plan: BasePlan | None = None
        self.schema_notes: list[str] = []
        # keys looked up and found on one record since the base last took a new one: a blocked base's
        # retries refuse the same events again, and need not look them up again
        self._single: set[tuple[str, str, Any]] = set()
        self.warnings: list[str] = []  # what the writes leave out, and why
        self.max_records = 0  # [airtable] max_records: the plan's cap across the base's tables; 0 not counted
        self.records: int | None = None  # what the three tables hold: counted at start and on sync, then kept
        self._recount = True
        # a recount and a deletion never overlap: a deletion then counts once, whether a recount saw it or not
        self._counting = asyncio.Lock()

    @classmethod
    def from_config(
        cls,
        config: AirtableConfig,
        conversations: Callable[[Sequence[str]], Awaitable[dict[str, ConversationState]]] | None,
        monthly: MonthlyRequests | None = None,
        messages: Callable[[Sequence[str]], Awaitable[dict[str, tuple[str, str]]]] | None = None,
        reports: Callable[[Sequence[str]], Awaitable[dict[str, str]]] | None = None,
    ) -> AirtableSink:
        """A sink with a client and budget of its own; `conversations` None for one that only reads and
        deletes (a command with no daemon running)."""
        budget = RequestBudget(config.requests_per_second, start_empty=True, monthly=monthly)
        client = AirtableClient(config.api_key.get_secret_value(), config.base_id, config.endpoint_url, budget)
        sink = cls(client, names_from_config(config), conversations, messages, reports)
        sink.linger_s = config.linger_s
        sink.max_records = config.max_records
        return sink

    def stats(self) -> SinkStats:
        stats: SinkStats = {**self.client.budget.stats(), "warnings": list(self.warnings)}
        if self.max_records:
            stats["records"], stats["max_records"] = self.records, self.max_records
        return stats

    def access(self) -> BaseAccess:
        """The base as a command or a read reaches it through this sink, with its names as they are now."""
        return BaseAccess(self.client, self.tables, self.delete_records)

    def budget_full(self) -> bool:
        """Whether no token of the base's budget is spent or in flight (background work waits for it)."""
        return self.client.budget.tokens_left >= self.client.budget.capacity

    def set_rate(self, requests_per_second: float) -> None:
        """A new [airtable] requests_per_second (SIGHUP)."""
        self.client.budget.set_rate(requests_per_second)

    def carry_budget(self, replaced: AirtableSink) -> None:
        """Go on from the budget of the sink this one replaces (SIGHUP): for the same base the same budget (its
        tokens, a 429's lockout, what recover still spends), for another base its counts since start."""
        old, new = replaced.client, self.client
        if new.same_base(old):
            new.budget = old.budget
            return
        new.budget.requests_total += old.budget.requests_total
        new.budget.rejected_429 += old.budget.rejected_429

    def wake(self) -> None:
        """A retry asked for (sync, SIGHUP, replay, init): read the schema again, lift a quota pause."""
        self._schema_ok = False
        if self.client.budget.pause_reason == QUOTA_REASON:
            self.client.budget.resume()

    def operator_sync(self) -> None:
        """`chatledger sync` itself: let delivery go on past [airtable] monthly_request_limit for the rest
        of this month, and count the base's records again (the operator may have deleted some)."""
        if self.client.budget.monthly is not None:
            self.client.budget.monthly.lift()
        self._recount = bool(self.max_records)

    def set_max_records(self, max_records: int) -> None:
        """A new [airtable] max_records (SIGHUP): a cap set where there was none counts the base at the next check."""
        self.max_records = max_records
        if max_records and self.records is None:
            self._recount = True

    def rename_fields(self, fields: dict[str, dict[str, str]]) -> None:
        """Apply a new [airtable.fields] (SIGHUP); the schema is read again before the next write."""
        self.tables = BaseNames(self.tables, fields)
        self._schema_ok = False

    async def check(self) -> None:
        plan = await read_plan(self.client, self.tables, probe=not self._schema_ok)
        if plan.notes != self.schema_notes:
            for note in plan.notes:
                logger.info("airtable: {}", note)
            self.schema_notes = plan.notes
        if plan.warnings != self.warnings:
            for warning in plan.warnings:
                logger.warning("airtable: {}", warning)
            self.warnings = plan.warnings
        if plan.problems:
            self._schema_ok = False
            raise SetupError(
                "the base cannot take what chatledger writes (`chatledger airtable init` creates "
                "missing tables and fields, [airtable.fields] maps renamed ones): " + "; ".join(plan.problems)
            )
        self.plan = plan
        self._schema_ok = True
        await self._count()

    async def _count(self) -> None:
        """Count the base's records when asked (start, sync); a failure leaves it for the next delivery."""
        if not (self.max_records and self._recount):
            return
        try:
            self.records = await self.count_records()
        except Exception as exc:
            logger.warning(
                "airtable: the base's records are not counted yet ({}); tried again at the next delivery", exc
            )
            return
        self._recount = False

    async def count_records(self) -> int:
        """The records of the three tables, a page of 100 keys a request (a Team base's 50,000: 500)."""
        total = 0
        async with self._counting:
            for kind in TABLES:
                async for page in pages(
                    self.client, self.tables[kind], None, fields=[self.tables.field(kind, KEYS[kind])]
                ):
                    total += len(page)
        logger.info("airtable: the base holds {} records ([airtable] max_records {})", total, self.max_records)
        return total

    async def delete_records(self, table: str, record_ids: list[str]) -> None:
        """Delete up to 10 records (retention, forget); the records count follows each such request."""
        async with self._counting:
            await self.client.delete(table, record_ids)
            if self.records is not None:
                self.records = max(0, self.records - len(record_ids))

    def probe_spacing(self) -> float:
        """Seconds at least between probes of a blocked base, under [airtable] monthly_request_limit."""
        monthly = self.client.budget.monthly
        if monthly is None:
            return 0.0
        return probe_spacing(monthly.limit, monthly.stats()["requests_this_month"], time.time())

    async def deliver(self, events: Sequence[StoredEvent]) -> int:
        assert self._conversations is not None, "a sink built to read and delete does not deliver"
        if not self._schema_ok:
            await self.check()
        else:
            await self._count()
        records = map_events(events)
        ids = [touch.conversation_id for touch in records.conversations]
        enriched = enriched_messages(records)
        messages = await self._messages(enriched) if enriched and self._messages is not None else {}
        message_ids = [row.message_id for row in records.interactions if row.message_id]
        reports = await self._reports(message_ids) if message_ids and self._reports is not None else {}
        assert self.plan is not None  # read by check(), which a delivery runs first
        tables = self.plan.tables
        rows = airtable_rows(events, records, await self._conversations(ids), messages, reports)
        writes = [
            (tables[kind].table, tables[kind].key, chunk)
            for kind in CREATING_FIRST
            for table_rows in ([tables[kind].row(row) for row in rows[kind]],)
            for chunk in (
                table_rows[i : i + RECORDS_PER_REQUEST] for i in range(0, len(table_rows), RECORDS_PER_REQUEST)
            )
        ]
        return await self._write(writes, alone=len(events) == 1)

    async def _write(self, writes: list[tuple[str, str, list[dict[str, Any]]]], alone: bool) -> int:
        """Send the upserts THREADS at a time (the budget is the pace) and none after one fails: the
        batch is sent again or split anyway, and a base refusing everything must not cost the whole
        batch's requests. How many records they created, or the gravest failure."""
        if alone and len(writes) > 1:
            # One event's creating write goes first, alone: a base at its records cap (a blocked base's
            # probe) refuses it for one request, not one per table.
            created = await self._write(writes[:1], alone)
            return created + await self._write(writes[1:], alone)
        created = 0
        failures: list[tuple[Exception, tuple[str, str, list[dict[str, Any]]]]] = []
        queue = iter(writes)

        async def runner() -> None:
            nonlocal created
            for write in queue:
                try:
                    made = await self.client.upsert(*write)  # not `created += await ...`: runners interleave
                    created += made
                except Exception as exc:
                    failures.append((exc, write))
                if failures:
                    return

        await asyncio.gather(*(runner() for _ in range(min(THREADS, len(writes)))))
        if created:  # before any failure is raised: what the writes that went through created is in the base
            self._single.clear()
            if self.records is not None:
                self.records += created
        for kind in (*SEVERITY, Exception):
            for error, write in failures:
                if isinstance(error, kind):
                    if isinstance(error, SetupError):
                        self._schema_ok = False
                    if isinstance(error, RefusedError) and alone:
                        duplicated = await self._duplicated(*write)
                        if duplicated:
                            raise PermanentError(f"{error}: {duplicated}") from error
                    raise error
        return created

    async def _duplicated(self, table: str, key: str, rows: list[dict[str, Any]]) -> str | None:
        """Why an upsert fails if it is a key typed twice in the base by hand (the upsert then matches
        several records; Airtable does not document its error for that, so we look)."""
        values = list(
            dict.fromkeys(
                row[key] for row in rows if row.get(key) is not None and (table, key, row[key]) not in self._single
            )
        )
        if not values:
            return None
        found, _ = await self.client.list_page(table, any_of_formula(key, values), None)
        counts = Counter(record.get("fields", {}).get(key) for record in found)
        twice = [value for value in values if counts[value] > 1]
        if not twice:
            self._single.update((table, key, value) for value in values)
            return None
        which = ", ".join(f"{key} {value!r} ({counts[value]} records)" for value in twice)
        return (
            f"{table} holds {which}, and an upsert must find at most one: delete the duplicate row in "
            "Airtable, then run `chatledger replay --dead`"
        )

    async def close(self) -> None:
        self.client.close()


def probe_spacing(limit: int, used: int, now: float) -> float:
    """Seconds between probes so that they spend at most PROBE_SHARE of the requests `limit` leaves
    this month (UTC), never past the month's turn; 0 without a limit, or past it (the base is then
    held as `quota`, or an operator's `sync` chose to go on)."""
    left = limit - used
    if not limit or left <= 0:
        return 0.0
    day = datetime.fromtimestamp(now, UTC)
    turn = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC).timestamp()
    return min(turn - now, (turn - now) / (PROBE_SHARE * left))


def names_from_config(config: Any) -> BaseNames:
    """The tables' and fields' names in the base, from [airtable]."""
    return BaseNames(
        {
            "conversations": config.conversations_table,
            "interactions": config.interactions_table,
            "escalations": config.escalations_table,
        },
        parse_field_mapping(config.fields),
    )
