"""Airtable over HTTP: the only module that imports pyairtable (and requests), and the one home of the
formulas chatledger sends.

pyairtable is synchronous (requests): every call runs in a small thread pool, never on the event
loop, with a timeout and pyairtable's own retries off, so that the request budget (5/s per base)
and the delivery loop's backoff are the only retry layers. Every request, reads and metadata
included, takes a token first, and its failure comes back as one of the delivery loop's error kinds
(classify). Every formula is built by pyairtable, whose to_formula_str quotes each value and each
field name: a value can never change what a formula selects. The field names themselves come from
airtable_fields, the plans from airtable_schema.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import requests
from loguru import logger
from pyairtable import Api
from pyairtable.formulas import CONCATENATE, EQ, GTE, LT, OR, REGEX_REPLACE, Field, to_formula_str

from daemon.ratelimit import BudgetPaused, RequestBudget
from daemon.records import parse_time
from daemon.sinks.airtable_fields import KEYS, TABLES, BaseNames
from daemon.sinks.airtable_schema import BasePlan, plan_base
from daemon.sinks.base import PermanentError, RefusedError, SetupError, SinkError, TransientError

RECORDS_PER_REQUEST = 10
PAGE_SIZE = 100  # records per list request, Airtable's maximum
TIMEOUT = (5, 30)  # connect, read (seconds)
LOCKOUT = 30.0  # what Airtable imposes after a 429
QUOTA_RETRY = 3600.0  # the monthly quota does not come back by waiting a minute
THREADS = 5
QUOTA_REASON = "monthly API quota exhausted"
# How long a reader (the bot API) trusts the plan last read: the sink reads the schema again on sync,
# SIGHUP and init, and what an operator changes without telling chatledger is seen within this.
PLAN_MAX_AGE = 600.0
IDS_PER_FORMULA = 40


# -- errors ----------------------------------------------------------------------------------------


class ThrottledError(TransientError):
    """Airtable answered 429 RATE_LIMIT_REACHED anyway: the whole base pauses for the lockout."""

    state = "throttled"


class QuotaError(TransientError):
    """The workspace's monthly API quota is exhausted: stop calling, retry hourly."""

    state = "quota"


SETUP_TYPES = {
    "UNKNOWN_FIELD_NAME",
    "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND",
    "INVALID_PERMISSIONS",
    "AUTHENTICATION_REQUIRED",
    "NOT_FOUND",
    "TABLE_NOT_FOUND",
    "INVALID_MULTIPLE_CHOICE_OPTIONS",
}


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


# -- the client ------------------------------------------------------------------------------------


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

    def __init__(
        self, api_key: str, base_id: str, endpoint_url: str, budget: RequestBudget, *, lockout: float = LOCKOUT
    ):
        self.base_id = base_id
        self.budget = budget
        self.lockout = lockout
        self._api_key = api_key
        self._endpoint_url = endpoint_url
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="airtable")
        self.plans = PlanCache()  # what the sink, `airtable check` or recover read last, for the bot API
        self.closed = False

    def same_base(self, other: AirtableClient) -> bool:
        """Whether both call the same base at the same address (one base, one budget)."""
        return (self.base_id, self._endpoint_url) == (other.base_id, other._endpoint_url)

    def _api(self) -> Api:
        api = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = Api(
                self._api_key, timeout=TIMEOUT, retry_strategy=None, endpoint_url=self._endpoint_url
            )
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
                except Exception as exc:
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
            raise QuotaError(
                f"{what}: not sent, {paused.reason}; next try in {paused.retry_after:.0f} s",
                retry_after=paused.retry_after,
            ) from None

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
            return api.request(
                "GET", api.table(self.base_id, table).urls.records, options={"page_size": 1, "fields": [field]}
            )

        await self.call(f"reading {table}", fetch)

    async def upsert(self, table: str, key: str, rows: list[dict[str, Any]]) -> int:
        """Create or update these records by `key`; how many were created."""
        assert len(rows) <= RECORDS_PER_REQUEST
        answer = await self.call(
            f"upserting {len(rows)} records into {table}",
            lambda api: api.table(self.base_id, table).batch_upsert(
                [{"fields": row} for row in rows], key_fields=[key], typecast=True
            ),
            write=True,
        )
        return len(answer.get("createdRecords") or [])

    async def list_page(
        self, table: str, formula: str | None, offset: str | None, fields: Sequence[str] = ()
    ) -> tuple[list[dict[str, Any]], str | None]:
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
        await self.call(
            f"deleting {len(record_ids)} records from {table}",
            lambda api: api.table(self.base_id, table).batch_delete(record_ids),
        )

    async def create_table(self, name: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
        created: dict[str, Any] = await self.call(
            f"creating table {name}",
            lambda api: api.request(
                "POST", api.build_url(f"meta/bases/{self.base_id}/tables"), json={"name": name, "fields": fields}
            ),
        )
        return created

    async def create_field(self, table_id: str, field: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.call(
            f"creating field {field['name']}",
            lambda api: api.request(
                "POST", api.build_url(f"meta/bases/{self.base_id}/tables/{table_id}/fields"), json=field
            ),
        )
        return created

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
            delay = exc.retry_after or min(30.0, 0.5 * 2**attempt)
            logger.warning("{}; trying again in {:.0f} s", exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def pages(
    client: AirtableClient,
    table: str,
    formula: str | None,
    fields: Sequence[str] = (),
    before_each: Callable[[], Awaitable[None]] | None = None,
    attempts: int = 8,
) -> AsyncIterator[list[dict[str, Any]]]:
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


# -- the base's write plan, as read through the client ----------------------------------------------


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


# -- formulas ---------------------------------------------------------------------------------------


def equals_formula(name: str, value: str) -> str:
    return to_formula_str(EQ(Field(name), value))


def any_of_formula(name: str, values: Sequence[str]) -> str:
    """Records whose `name` is one of `values` (a few dozen at most: the formula travels in the URL)."""
    return to_formula_str(OR(*(EQ(Field(name), value) for value in values)))


def ids_formulas(name: str, ids: Sequence[str]) -> list[str]:
    """Formulas matching these values of `name`, a few dozen per formula (URLs stay short)."""
    return [any_of_formula(name, ids[i : i + IDS_PER_FORMULA]) for i in range(0, len(ids), IDS_PER_FORMULA)]


def phone_formula(name: str, phone: str) -> str:
    """Matches however the phone was typed (+55 11 ..., 5511...): compares the digits."""
    if not re.fullmatch(r"[0-9]+", phone):
        raise ValueError(f"a phone to look up must be digits, not {phone!r}")
    # CONCATENATE makes a number cell text, which REGEX_REPLACE needs
    return to_formula_str(EQ(REGEX_REPLACE(CONCATENATE(Field(name), ""), "[^0-9]", ""), phone))


def since_formula(name: str, since: str) -> str:
    """Records whose date `name` is at or after `since` (journal time text)."""
    return to_formula_str(GTE(Field(name), parse_time(since)))


def before_formula(name: str, moment: datetime) -> str:
    """Records whose date `name` is before `moment`."""
    return to_formula_str(LT(Field(name), moment))
