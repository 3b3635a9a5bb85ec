"""The Airtable sink: the same rows as PostgreSQL, upserted through pyairtable under the base's budget.

pyairtable is synchronous (requests): every call runs in a small thread pool, never on the event
loop, with a timeout and pyairtable's own retries off, so that the request budget (5/s per base)
and the delivery loop's backoff are the only retry layers. Every request, reads and metadata
included, takes a token first. Writes are upserts keyed on ConversationId / InteractionId /
EscalationId, so a retry or a replay never creates a duplicate. Which field each value goes to, and
in which form, comes from the base's own schema (airtable_schema's write plan).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import requests
from loguru import logger
from pyairtable import Api
from pyairtable.formulas import EQ, OR, Field, to_formula_str

from daemon.events import StoredEvent
from daemon.ratelimit import BudgetPaused, MonthlyRequests, RequestBudget
from daemon.records import (
    INTERACTION_STATUS, ConversationState, InteractionRow, Records, iso, later_status, map_events, tags_text,
)
from daemon.sinks.airtable_schema import (
    KEYS, TABLES, TITLES, BaseNames, BasePlan, parse_field_mapping, plan_base,
)
from daemon.sinks.base import PermanentError, RefusedError, SetupError, SinkError, TransientError

RECORDS_PER_REQUEST = 10
PAGE_SIZE = 100  # records per list request, Airtable's maximum
BATCH_SIZE = 500  # events per delivery: 50 interaction requests share the conversation upserts
TIMEOUT = (5, 30)  # connect, read (seconds)
LOCKOUT = 30.0  # what Airtable imposes after a 429
QUOTA_RETRY = 3600.0  # the monthly quota does not come back by waiting a minute
SETUP_RETRY = 3600.0  # an unprepared base is fixed by an operator, who then runs `sync`: each check costs requests
THREADS = 5
QUOTA_REASON = "monthly API quota exhausted"
# How long a reader (the bot API) trusts the plan last read: the sink reads the schema again on sync,
# SIGHUP and init, and what an operator changes without telling chatledger is seen within this.
PLAN_MAX_AGE = 600.0
PROBE_SHARE = 0.1  # a blocked base's probes spend at most this share of the month's remaining requests
CREATING_FIRST = ("interactions", "escalations", "conversations")  # the write most likely to create a record first

class ThrottledError(TransientError):
    """Airtable answered 429 RATE_LIMIT_REACHED anyway: the whole base pauses for the lockout."""

    state = "throttled"


class QuotaError(TransientError):
    """The workspace's monthly API quota is exhausted: stop calling, retry hourly."""

    state = "quota"


# -- mapping ---------------------------------------------------------------------------------------

def _drop_empty(fields: dict[str, Any]) -> dict[str, Any]:
    """Leave out what we do not know, so that an upsert never clears what an operator typed."""
    return {k: v for k, v in fields.items() if v is not None and v != ""}


def conversation_fields(state: ConversationState) -> dict[str, Any]:
    metadata = _drop_empty({"bot_id": state.bot_id, "contact_id": state.contact_id, "service": state.service})
    return _drop_empty({
        "ConversationId": state.conversation_id, "CustomerPhone": state.phone, "CustomerName": state.name,
        "Status": state.status, "StartedAt": state.started_at, "LastActivity": state.last_activity,
        "MessageCount": state.message_count, "Metadata": json.dumps(metadata, sort_keys=True),
        "CreatedAt": state.first_event_at, "UpdatedAt": state.updated_at,
    })


def enriched_messages(records: Records) -> list[str]:
    """The dedup keys of the messages this delivery's bot API interactions enrich."""
    return [row.message_key for row in records.interactions if row.message_key]


def _interaction_times(row: InteractionRow, received: dict[str, str],
                       messages: Mapping[str, tuple[str, str]]) -> tuple[str, str]:
    """Timestamp and CreatedAt: an enrichment of a message the journal holds has that message's (as
    PostgreSQL keeps them); the bot's time stands in only until the message arrives."""
    if row.message_key:
        known = messages.get(row.message_key)
        if known is not None:
            return known
    return iso(row.occurred_at), received[row.dedup_key]


def _interaction_status(row: InteractionRow, messages: Mapping[str, tuple[str, str]],
                        reports: Mapping[str, str]) -> str | None:
    """The furthest status anyone reported for this interaction (as PostgreSQL keeps it, records.later_status):
    a replayed message or a late enrichment never moves it back."""
    status = later_status(row.status, reports.get(row.message_id) if row.message_id else None)
    if row.message_key and row.message_key in messages:  # the message's own webhook said this much
        status = later_status(status, INTERACTION_STATUS[row.direction])
    return status


def airtable_rows(events: Sequence[StoredEvent], records: Records, conversations: dict[str, ConversationState],
                  messages: Mapping[str, tuple[str, str]] | None = None,
                  reports: Mapping[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The upserts one delivery makes, by table: one per interaction and escalation, and one per
    conversation touched (coalesced, with the journal's latest count and span, then what the bot API
    set on it), each record once. `messages`: (occurred_at, received_at) of the enriched messages
    (enriched_messages) the journal holds; `reports`: the furthest status the journal's bot API and
    reconciliation events report per message id (Journal.reported_statuses)."""
    received = {event.dedup_key: event.received_at for event in events}
    interactions = []
    for row in records.interactions:
        timestamp, created = _interaction_times(row, received, messages or {})
        interactions.append(_drop_empty({
            "InteractionId": row.interaction_id, "ConversationId": row.conversation_id,
            "MessageId": row.message_id, "Direction": row.direction, "Content": row.content,
            "Status": _interaction_status(row, messages or {}, reports or {}),
            "Timestamp": timestamp, "CreatedAt": created, "Intent": row.intent, "Response": row.response,
            "ProcessingTime": row.processing_time_ms, "ErrorMessage": row.error_message,
        }))
    escalations = [_drop_empty({
        "EscalationId": row.escalation_id, "TicketId": row.ticket_id, "ConversationId": row.conversation_id,
        "Reason": row.reason, "Priority": row.priority, "Status": row.status, "CustomerPhone": row.customer_phone,
        "CreatedAt": iso(row.created_at), "Notes": row.notes, "AssignedAgent": row.assigned_agent,
    }) for row in records.escalations]
    escalations += [_drop_empty({
        "EscalationId": u.escalation_id, "Status": u.status, "AssignedAgent": u.assigned_agent,
        "ResolvedAt": iso(u.resolved_at) if u.resolved_at else None, "Notes": u.notes,
    }) for u in records.escalation_updates]
    touched = dict.fromkeys(touch.conversation_id for touch in records.conversations)
    conversation_rows = [conversation_fields(conversations[c]) for c in touched if c in conversations]
    conversation_rows += [_drop_empty({
        "ConversationId": u.conversation_id, "Intent": u.intent, "Sentiment": u.sentiment, "Priority": u.priority,
        "AssignedAgent": u.assigned_agent, "Tags": tags_text(u.tags) if u.tags is not None else None,
        "Status": u.status,
    }) for u in records.conversation_updates]
    return {
        "conversations": _merged(conversation_rows, "ConversationId"),
        "interactions": _merged(interactions, "InteractionId"),
        "escalations": _merged(escalations, "EscalationId"),
    }


def _merged(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One record per key, later fields winning: an upsert request must not name a record twice."""
    out: dict[Any, dict[str, Any]] = {}
    for row in rows:
        out.setdefault(row[key], {}).update(row)
    return list(out.values())


# -- errors ----------------------------------------------------------------------------------------

SETUP_TYPES = {"UNKNOWN_FIELD_NAME", "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND", "INVALID_PERMISSIONS",
               "AUTHENTICATION_REQUIRED", "NOT_FOUND", "TABLE_NOT_FOUND", "INVALID_MULTIPLE_CHOICE_OPTIONS"}


def classify(exc: Exception, what: str, write: bool = False) -> Exception:
    """A pyairtable/requests failure as the delivery loop's error kinds.

    A write refused with a 4xx that is neither the credentials, a missing table nor the rate is a
    RefusedError: a value Airtable will not take, but just as well a records cap or a plan limit (its
    answer there is not documented), which only the delivery loop can tell apart."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        try:
            error = exc.response.json().get("error")
        except ValueError:
            error = None
        kind = error if isinstance(error, str) else (error or {}).get("type", "")
        message = (error or {}).get("message", "") if isinstance(error, dict) else ""
        detail = f"{what}: HTTP {status} {kind}{': ' + message if message else ''}"
        if status == 429 and kind == "PUBLIC_API_BILLING_LIMIT_EXCEEDED":
            return QuotaError(detail)
        if status == 429:
            return ThrottledError(detail)
        if status == 401 or kind in SETUP_TYPES or (status in (403, 404) and not (write and kind)):
            return SetupError(detail)
        if status == 413:
            return PermanentError(detail)
        if write and 400 <= status < 500:
            return RefusedError(detail)
        if status == 422:
            return PermanentError(detail)
        return TransientError(detail)
    if isinstance(exc, requests.Timeout):
        return TransientError(f"{what}: Airtable did not answer in time ({exc.__class__.__name__})")
    if isinstance(exc, (requests.ConnectionError, OSError)):
        return TransientError(f"{what}: cannot reach Airtable ({exc.__class__.__name__})")
    if isinstance(exc, requests.RequestException):
        return TransientError(f"{what}: {exc}")
    return exc


SEVERITY = (SetupError, QuotaError, ThrottledError, PermanentError, TransientError)


# -- the sink --------------------------------------------------------------------------------------

class PlanCache:
    """The base's write plan as last read, so that a reader need not read the schema for every request."""

    def __init__(self, max_age: float = PLAN_MAX_AGE, clock: Callable[[], float] = time.monotonic):
        self.max_age = max_age
        self._clock = clock
        self._last: tuple[float, BaseNames, BasePlan] | None = None

    def remember(self, names: BaseNames, plan: BasePlan) -> None:
        self._last = (self._clock(), names, plan)

    async def get(self, names: Mapping[str, str], read: Callable[[], Awaitable[BasePlan]]) -> BasePlan:
        """The plan for `names` read less than max_age ago, else `read()` now."""
        names = BaseNames.of(names)
        if self._last is not None:
            at, known, plan = self._last
            if self._clock() - at < self.max_age and known.same(names):
                return plan
        plan = await read()
        self.remember(names, plan)
        return plan


class AirtableClient:
    """pyairtable behind the base's budget, in a thread pool; one Api (requests.Session) per thread."""

    def __init__(self, api_key: str, base_id: str, endpoint_url: str, budget: RequestBudget, *,
                 lockout: float = LOCKOUT):
        self.base_id = base_id
        self.budget = budget
        self.lockout = lockout
        self._api_key = api_key
        self._endpoint_url = endpoint_url
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="airtable")
        self.plans = PlanCache()  # what the sink, `airtable check` or recover read last, for the bot API
        self.closed = False

    def _api(self) -> Api:
        api = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = Api(self._api_key, timeout=TIMEOUT, retry_strategy=None,
                                        endpoint_url=self._endpoint_url)
        return api

    async def call(self, what: str, function: Callable[[Api], Any], write: bool = False) -> Any:
        """One HTTP request: a token, then the call in a thread; failures come back classified."""
        if self.closed:  # a job that held on to a sink SIGHUP replaced (a retention run, an API read)
            raise SinkError(f"{what}: not sent, the Airtable client was closed (replaced on SIGHUP, or stopping)")
        try:
            async with self.budget.request():
                loop = asyncio.get_running_loop()
                try:
                    return await loop.run_in_executor(self._pool, lambda: function(self._api()))
                except Exception as exc:  # noqa: BLE001 - classified below, nothing swallowed
                    error = classify(exc, what, write)
                    if isinstance(error, ThrottledError):
                        self.budget.note_429()
                        self.budget.pause(self.lockout, "429 RATE_LIMIT_REACHED")
                        error.retry_after = self.lockout
                    elif isinstance(error, QuotaError):
                        self.budget.pause(QUOTA_RETRY, QUOTA_REASON, refuse=True)
                        error.retry_after = QUOTA_RETRY
                    raise error from exc
        except BudgetPaused as paused:  # only the quota pause refuses
            raise QuotaError(f"{what}: not sent, {paused.reason}; next try in {paused.retry_after:.0f} s",
                             retry_after=paused.retry_after) from None

    async def schema(self) -> list[dict[str, Any]] | None:
        """The base's tables (metadata API); None when the token may not read them (403: a token without
        the scope schema.bases:read, or without access to the base, which a data call then tells)."""
        def read(api: Api) -> Any:
            try:
                return api.request("GET", api.build_url(f"meta/bases/{self.base_id}/tables"))
            except requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 403:
                    return None
                raise

        answer = await self.call("reading the base schema", read)
        return None if answer is None else answer.get("tables", [])

    async def probe(self, table: str, field: str) -> None:
        """Read at most one record of `table`, `field` only: fails as a write would on a missing table or field."""
        def fetch(api: Api) -> Any:
            return api.request("GET", api.table(self.base_id, table).urls.records,
                               options={"page_size": 1, "fields": [field]})

        await self.call(f"reading {table}", fetch)

    async def upsert(self, table: str, key: str, rows: list[dict[str, Any]]) -> int:
        """Create or update these records by `key`; how many were created."""
        assert len(rows) <= RECORDS_PER_REQUEST
        answer = await self.call(f"upserting {len(rows)} records into {table}", lambda api: api.table(
            self.base_id, table).batch_upsert([{"fields": row} for row in rows], key_fields=[key], typecast=True),
            write=True)
        return len(answer.get("createdRecords") or [])

    async def list_page(self, table: str, formula: str | None, offset: str | None,
                        fields: Sequence[str] = ()) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a table's records (id and fields, or only `fields`) matching `formula`, and the next
        page's offset."""
        options: dict[str, Any] = {"page_size": PAGE_SIZE}
        if formula:
            options["formula"] = formula
        if fields:
            options["fields"] = list(fields)
        if offset:
            options["offset"] = offset

        def fetch(api: Api) -> Any:
            urls = api.table(self.base_id, table).urls
            return api.request("GET", urls.records, fallback=("POST", urls.records_post), options=options)

        answer = await self.call(f"reading {table}", fetch)
        return answer.get("records", []), answer.get("offset")

    async def delete(self, table: str, record_ids: list[str]) -> None:
        assert len(record_ids) <= RECORDS_PER_REQUEST
        await self.call(f"deleting {len(record_ids)} records from {table}",
                        lambda api: api.table(self.base_id, table).batch_delete(record_ids))

    async def create_table(self, name: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.call(f"creating table {name}", lambda api: api.request(
            "POST", api.build_url(f"meta/bases/{self.base_id}/tables"), json={"name": name, "fields": fields}))

    async def create_field(self, table_id: str, field: dict[str, Any]) -> dict[str, Any]:
        return await self.call(f"creating field {field['name']}", lambda api: api.request(
            "POST", api.build_url(f"meta/bases/{self.base_id}/tables/{table_id}/fields"), json=field))

    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


async def patiently(call: Callable[[], Awaitable[Any]], attempts: int = 8) -> Any:
    """For an operator's command: wait out transient failures (a 429 lockout, a 5xx, a timeout) a few
    times; a misconfiguration or an exhausted quota fails at once."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except (SetupError, QuotaError):
            raise
        except TransientError as exc:
            if attempt == attempts:
                raise
            delay = exc.retry_after or min(30.0, 0.5 * 2 ** attempt)
            logger.warning("{}; trying again in {:.0f} s", exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def pages(client: AirtableClient, table: str, formula: str | None, fields: Sequence[str] = (),
                before_each: Callable[[], Awaitable[None]] | None = None,
                attempts: int = 8) -> AsyncIterator[list[dict[str, Any]]]:
    """Every page of records matching `formula`, one budgeted request each, patiently (after
    `before_each()`, when given: a background job waiting for spare budget)."""
    offset: str | None = None
    while True:
        if before_each is not None:
            await before_each()
        page, offset = await patiently(lambda: client.list_page(table, formula, offset, fields), attempts)
        yield page
        if not offset:
            return


async def probe_tables(client: AirtableClient, names: BaseNames) -> None:
    """Without the schema, check each table and its key by reading a record: a missing one is a SetupError."""
    for kind in TABLES:
        await client.probe(names[kind], names.field(kind, KEYS[kind]))


async def read_plan(client: AirtableClient, names: BaseNames, probe: bool = True) -> BasePlan:
    """The base's write plan from its schema; without the schema scope, the documented base's (the tables
    probed first unless `probe` is False)."""
    schema = await client.schema()
    if schema is None and probe:
        await probe_tables(client, names)
    plan = plan_base(schema, names)
    client.plans.remember(names, plan)
    return plan


async def current_plan(client: AirtableClient, names: Mapping[str, str], attempts: int = 8) -> BasePlan:
    """The base's write plan for a reader: the one last read through `client` while recent, else the
    schema read now (patiently; without the schema scope, the documented base's)."""
    names = BaseNames.of(names)
    return await client.plans.get(names, lambda: patiently(lambda: read_plan(client, names, probe=False), attempts))


async def init_base(client: AirtableClient, names: dict[str, str]) -> list[str]:
    """Create the tables and fields chatledger writes that the base lacks, under the operator's names;
    what was done, in words.

    Existing tables and fields are never changed: a field of another type is written as its type
    allows, or left out (`chatledger airtable check` says which). A missing field that looks renamed is
    not created beside its twin: [airtable.fields] maps it."""
    names = BaseNames.of(names)
    schema = await client.schema()
    if schema is None:
        raise SetupError("airtable init reads and changes the base's schema: give the token the scopes "
                         "schema.bases:read and schema.bases:write (HTTP 403 on the metadata API)")
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
                done.append(f"did not create {name}.{missing.name}: {missing.twin!r} looks like it renamed "
                            f"(map it under [airtable.fields], or create the field by hand)")
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
    mapping = {f"{TITLES[kind]}.{ours}": theirs for kind, fields in names.fields.items()
               for ours, theirs in fields.items()}
    return {"done": done, "problems": plan.problems, "warnings": plan.warnings, "notes": plan.notes,
            "fields": mapping}


class AirtableSink:
    name = "airtable"
    batch_size = BATCH_SIZE
    # Requests are what a plan counts: no check while idle (a schema read every 30 s is 86,000 a month),
    # and deliveries linger until a request can carry RECORDS_PER_REQUEST records ([airtable] linger_s).
    idle_check_s = None
    linger_batch = RECORDS_PER_REQUEST
    linger_s = 0.0
    setup_retry_cap = SETUP_RETRY  # misconfigured: the backoff's cap (each retry reads the schema)

    def __init__(self, client: AirtableClient, tables: dict[str, str],
                 conversations: Callable[[Sequence[str]], Awaitable[dict[str, ConversationState]]],
                 messages: Callable[[Sequence[str]], Awaitable[dict[str, tuple[str, str]]]] | None = None,
                 reports: Callable[[Sequence[str]], Awaitable[dict[str, str]]] | None = None):
        self.client = client
        self.tables = BaseNames.of(tables)  # kind -> table name in the base, and the field names
        self._conversations = conversations
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
    def from_config(cls, config: Any, conversations, monthly: MonthlyRequests | None = None,
                    messages=None, reports=None) -> "AirtableSink":
        budget = RequestBudget(config.requests_per_second, start_empty=True, monthly=monthly)
        client = AirtableClient(config.api_key.get_secret_value(), config.base_id, config.endpoint_url, budget)
        sink = cls(client, names_from_config(config), conversations, messages, reports)
        sink.linger_s = config.linger_s
        sink.max_records = config.max_records
        return sink

    def stats(self) -> dict[str, Any]:
        stats = {**self.client.budget.stats(), "warnings": list(self.warnings)}
        if self.max_records:
            stats.update(records=self.records, max_records=self.max_records)
        return stats

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
            raise SetupError("the base cannot take what chatledger writes (`chatledger airtable init` creates "
                             "missing tables and fields, [airtable.fields] maps renamed ones): "
                             + "; ".join(plan.problems))
        self.plan = plan
        self._schema_ok = True
        await self._count()

    async def _count(self) -> None:
        """Count the base's records when asked (start, sync); a failure leaves it for the next delivery."""
        if not (self.max_records and self._recount):
            return
        try:
            self.records = await self.count_records()
        except Exception as exc:  # noqa: BLE001 - the count is a figure: delivery goes on without it
            logger.warning("airtable: the base's records are not counted yet ({}); tried again at the next "
                           "delivery", exc)
            return
        self._recount = False

    async def count_records(self) -> int:
        """The records of the three tables, a page of 100 keys a request (a Team base's 50,000: 500)."""
        total = 0
        async with self._counting:
            for kind in TABLES:
                async for page in pages(self.client, self.tables[kind], None,
                                        fields=[self.tables.field(kind, KEYS[kind])]):
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

    async def deliver(self, events: Sequence[StoredEvent]) -> None:
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
        tables = self.plan.tables
        rows = airtable_rows(events, records, await self._conversations(ids), messages, reports)
        writes = [(tables[kind].table, tables[kind].key, chunk)
                  for kind in CREATING_FIRST
                  for table_rows in ([tables[kind].row(row) for row in rows[kind]],)
                  for chunk in (table_rows[i:i + RECORDS_PER_REQUEST]
                                for i in range(0, len(table_rows), RECORDS_PER_REQUEST))]
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
                except Exception as exc:  # noqa: BLE001 - classified by the client, raised below
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
        values = list(dict.fromkeys(row[key] for row in rows if row.get(key) is not None
                                    and (table, key, row[key]) not in self._single))
        if not values:
            return None
        found, _ = await self.client.list_page(table, to_formula_str(OR(*(EQ(Field(key), v) for v in values))), None)
        counts = Counter(record.get("fields", {}).get(key) for record in found)
        twice = [value for value in values if counts[value] > 1]
        if not twice:
            self._single.update((table, key, value) for value in values)
            return None
        which = ", ".join(f"{key} {value!r} ({counts[value]} records)" for value in twice)
        return (f"{table} holds {which}, and an upsert must find at most one: delete the duplicate row in "
                "Airtable, then run `chatledger replay --dead`")

    async def close(self) -> None:
        self.client.close()


def probe_spacing(limit: int, used: int, now: float) -> float:
    """Seconds between probes so that they spend at most PROBE_SHARE of the requests `limit` leaves
    this month (UTC), never past the month's turn; 0 without a limit, or past it (the base is then
    held as `quota`, or an operator's `sync` chose to go on)."""
    left = limit - used
    if not limit or left <= 0:
        return 0.0
    day = datetime.fromtimestamp(now, timezone.utc)
    turn = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=timezone.utc).timestamp()
    return min(turn - now, (turn - now) / (PROBE_SHARE * left))


def names_from_config(config: Any) -> BaseNames:
    """The tables' and fields' names in the base, from [airtable]."""
    return BaseNames({"conversations": config.conversations_table, "interactions": config.interactions_table,
                      "escalations": config.escalations_table}, parse_field_mapping(config.fields))
