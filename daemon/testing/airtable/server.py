"""The emulator's HTTP side: Airtable's records and metadata API, its limits and its faults.

Built from the facts in the project's Airtable reference (records, upsert, list pagination and
filterByFormula, metadata read/create, error envelopes, 5 requests/s per base with a lockout), so
that the real pyairtable can be pointed at it with `endpoint_url`. Control routes under
`/_emulator/` (no auth) let tests and demos inject faults and read counters.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.testing.airtable import formula
from daemon.testing.airtable.model import (
    COMPUTED_TYPES,
    MERGEABLE_TYPES,
    ApiError,
    Base,
    Record,
    Table,
    field_from_config,
    iso_now,
    new_id,
)

MAX_RECORDS_PER_WRITE = 10
MAX_PAGE_SIZE = 100
MAX_URL_LENGTH = 16_000
INVALID_REQUEST = ("INVALID_REQUEST_UNKNOWN", "Invalid request: parameter validation failed. Check your request data.")
NOT_FOUND_MODEL = ApiError(
    403,
    "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND",
    "Invalid permissions, or the requested model was not found. Check that both your user and your token have "
    "the required permissions, and that the model names and/or ids are correct.",
)


@dataclass
class Faults:
    """What the emulator does wrong on purpose; set through /_emulator/faults."""

    status: int | None = None  # answer this 5xx to every request ...
    status_count: int | None = None  # ... this many times (None: until cleared)
    status_until: float | None = None  # ... or until this monotonic moment
    latency: float = 0.0  # seconds added to every request
    down_until: float | None = None  # drop connections until then
    billing_exceeded: bool = False  # 429 PUBLIC_API_BILLING_LIMIT_EXCEEDED on data calls
    refuse_value: str | None = None  # a write holding this text is refused as Airtable refuses a bad value


@dataclass
class BaseTraffic:
    arrivals: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    requests: int = 0
    rate_limited: int = 0  # 429 RATE_LIMIT_REACHED answers
    writes: int = 0


class Emulator:
    """State shared by every request: bases, tokens, limits, faults, counters."""

    def __init__(
        self,
        tokens: list[str],
        *,
        rate: int = 5,
        window: float = 1.0,
        lockout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        scopes: dict[str, set[str]] | None = None,
    ):
        self.tokens = set(tokens)
        self.scopes = {token: set(granted) for token, granted in (scopes or {}).items()}  # absent: every scope
        self.rate = rate
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self.bases: dict[str, Base] = {}
        self.traffic: dict[str, BaseTraffic] = {}
        self.faults = Faults()
        self._cursors: dict[str, list[str]] = {}

    def add_base(self, base_id: str | None = None, name: str = "chatledger") -> Base:
        base = Base(base_id or new_id("app"), name)
        self.bases[base.id] = base
        self.traffic[base.id] = BaseTraffic()
        return base

    def grant(self, token: str, scopes: set[str]) -> None:
        """Accept `token` with only these scopes (a token made without schema.bases:read, say)."""
        self.tokens.add(token)
        self.scopes[token] = set(scopes)

    def stats(self) -> dict[str, Any]:
        return {
            base_id: {
                "requests": t.requests,
                "rate_limited": t.rate_limited,
                "writes": t.writes,
                "locked_for_s": round(max(0.0, t.locked_until - self.clock()), 1),
                **(
                    {"records": self.bases[base_id].record_count, "max_records": self.bases[base_id].max_records}
                    if base_id in self.bases
                    else {}
                ),
            }
            for base_id, t in self.traffic.items()
        }

    # -- limits ----------------------------------------------------------------------------------

    def admit(self, base_id: str) -> None:
        """Count a request against its base; past the rate, lock the base out and answer 429."""
        traffic = self.traffic.setdefault(base_id, BaseTraffic())
        now = self.clock()
        traffic.requests += 1
        if now < traffic.locked_until:
            traffic.rate_limited += 1
            raise ApiError(429, "RATE_LIMIT_REACHED", "Rate limit exceeded. Please try again later")
        while traffic.arrivals and traffic.arrivals[0] <= now - self.window:
            traffic.arrivals.popleft()
        if len(traffic.arrivals) >= self.rate:
            traffic.locked_until = now + self.lockout
            traffic.rate_limited += 1
            raise ApiError(429, "RATE_LIMIT_REACHED", "Rate limit exceeded. Please try again later")
        traffic.arrivals.append(now)

    # -- lookups ---------------------------------------------------------------------------------

    def base(self, base_id: str) -> Base:
        base = self.bases.get(base_id)
        if base is None:
            raise NOT_FOUND_MODEL
        return base

    def table(self, base_id: str, key: str) -> Table:
        table = self.base(base_id).table(key)
        if table is None:
            raise NOT_FOUND_MODEL
        return table


EMULATOR = web.AppKey("emulator", Emulator)


def _error(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def airtable_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    emulator = request.app[EMULATOR]
    if request.path.startswith("/_emulator/"):
        return await handler(request)
    faults = emulator.faults
    now = emulator.clock()
    if faults.down_until is not None and now < faults.down_until:
        if request.transport is not None:
            request.transport.abort()  # the client sees the connection dropped
        raise web.HTTPServiceUnavailable()
    if faults.latency:
        await asyncio.sleep(faults.latency)
    try:
        if len(str(request.rel_url)) >= MAX_URL_LENGTH:
            raise ApiError(414, "REQUEST_URI_TOO_LONG", "URL too long")
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in emulator.tokens:
            raise ApiError(401, "AUTHENTICATION_REQUIRED", "Authentication required")
        token = header[7:]
        base_id = request.match_info.get("base")
        if base_id is None:
            _check_scope(emulator, token, request)
            return await _routed(request, handler)
        emulator.admit(base_id)
        _check_scope(emulator, token, request)
        if faults.status is not None and (faults.status_until is None or now < faults.status_until):
            if faults.status_count is None or faults.status_count > 0:
                if faults.status_count is not None:
                    faults.status_count -= 1
                raise ApiError(
                    faults.status,
                    "RETRIABLE_ERROR" if faults.status == 503 else "SERVER_ERROR",
                    "Server encountered an error while processing your request, and it is safe to retry the request",
                )
        if faults.billing_exceeded and not request.path.startswith("/v0/meta/"):
            raise ApiError(
                429,
                "PUBLIC_API_BILLING_LIMIT_EXCEEDED",
                "API billing plan limit exceeded. You've reached the maximum number of requests "
                "allowed for this month.",
            )
        if base_id not in emulator.bases:
            raise NOT_FOUND_MODEL
        return await _routed(request, handler)
    except ApiError as exc:
        return _error(exc)


def _scope_needed(request: web.Request) -> str:
    if request.path.startswith("/v0/meta/"):
        return "schema.bases:read" if request.method == "GET" else "schema.bases:write"
    if request.method == "GET" or request.path.endswith("/listRecords"):
        return "data.records:read"
    return "data.records:write"


def _check_scope(emulator: Emulator, token: str, request: web.Request) -> None:
    """A token without the scope a route needs gets Airtable's 403, as for a base it cannot see."""
    granted = emulator.scopes.get(token)
    if granted is not None and _scope_needed(request) not in granted:
        raise NOT_FOUND_MODEL


async def _routed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes answer as Airtable does: 404 {"error": "NOT_FOUND"}."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return web.json_response({"error": "NOT_FOUND"}, status=404)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise ApiError(
            400, "INVALID_REQUEST_BODY", "request encoding is invalid; the request can't be parsed as a valid JSON"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(422, *INVALID_REQUEST)
    return body


def _flag(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


# -- records ---------------------------------------------------------------------------------------


def _write_cells(table: Table, fields: Any, typecast: bool, refuse: str | None = None) -> dict[str, Any]:
    """Validated cell values by field id; raises ApiError (the whole request then fails)."""
    if not isinstance(fields, dict):
        raise ApiError(422, *INVALID_REQUEST)
    cells = {}
    for key, value in fields.items():
        target = table.field(key)
        if target is None:
            raise ApiError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{key}"')
        if refuse is not None and value == refuse:
            raise ApiError(422, "INVALID_VALUE_FOR_COLUMN", f'Field "{target.name}" cannot accept the provided value')
        cells[target.id] = target.coerce(value, typecast)
    return cells


def _records_payload(body: dict[str, Any]) -> list[dict[str, Any]]:
    records = body.get("records")
    if not isinstance(records, list) or not records:
        raise ApiError(422, *INVALID_REQUEST)
    if len(records) > MAX_RECORDS_PER_WRITE:
        raise ApiError(
            422,
            "INVALID_RECORDS",
            f"A maximum of {MAX_RECORDS_PER_WRITE} records can be created per "
            f"request but you have provided {len(records)}.",
        )
    if not all(isinstance(r, dict) for r in records):
        raise ApiError(422, *INVALID_REQUEST)
    return records


async def create_records(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    table = emulator.table(request.match_info["base"], request.match_info["table"])
    body = await _json(request)
    typecast, by_id = _flag(body.get("typecast")), _flag(body.get("returnFieldsByFieldId"))
    single = "records" not in body and "fields" in body
    payload = [{"fields": body["fields"]}] if single else _records_payload(body)
    refuse = emulator.faults.refuse_value
    prepared = [_write_cells(table, r.get("fields", {}), typecast, refuse) for r in payload]
    emulator.base(request.match_info["base"]).admit_creates(len(prepared))
    created = []
    for cells in prepared:
        record = Record(new_id("rec"), iso_now(), cells)
        table.records[record.id] = record
        created.append(table.render(record, by_id))
    emulator.traffic[request.match_info["base"]].writes += 1
    return web.json_response(created[0] if single else {"records": created})


async def update_records(request: web.Request) -> web.Response:
    """PATCH/PUT of up to 10 records, by id or with performUpsert; all or nothing."""
    emulator = request.app[EMULATOR]
    table = emulator.table(request.match_info["base"], request.match_info["table"])
    body = await _json(request)
    replace = request.method == "PUT"
    typecast, by_id = _flag(body.get("typecast")), _flag(body.get("returnFieldsByFieldId"))
    payload = _records_payload(body)
    upsert = body.get("performUpsert")
    merge_fields = []
    if upsert is not None:
        keys = upsert.get("fieldsToMergeOn") if isinstance(upsert, dict) else None
        if not isinstance(keys, list) or not 1 <= len(keys) <= 3:
            raise ApiError(422, *INVALID_REQUEST)
        for key in keys:
            target = table.field(key) if isinstance(key, str) else None
            if target is None:
                raise ApiError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{key}"')
            if target.type not in MERGEABLE_TYPES or target.type in COMPUTED_TYPES:
                raise ApiError(
                    422,
                    "INVALID_VALUE_FOR_COLUMN",
                    f'Field "{target.name}" cannot be used as a merge field: its type is {target.type}',
                )
            merge_fields.append(target)
    plan: list[tuple[Record | None, dict[str, Any]]] = []
    for item in payload:
        cells = _write_cells(table, item.get("fields", {}), typecast, emulator.faults.refuse_value)
        record_id = item.get("id")
        if record_id is not None:
            record = table.records.get(record_id)
            if record is None:
                raise ApiError(422, "ROW_DOES_NOT_EXIST", f"Record ID {record_id} does not exist in this table")
            plan.append((record, cells))
            continue
        if not merge_fields:
            raise ApiError(422, *INVALID_REQUEST)
        key = tuple(cells.get(f.id) for f in merge_fields)
        matches = (
            []
            if None in key
            else [r for r in table.records.values() if tuple(r.cells.get(f.id) for f in merge_fields) == key]
        )
        # a new key already planned in this request updates that record rather than creating two
        planned = [p for p in plan if p[0] is None and tuple(p[1].get(f.id) for f in merge_fields) == key]
        if len(matches) > 1:
            raise ApiError(
                422,
                "INVALID_VALUE_FOR_COLUMN",
                f"Cannot update records: more than one record matches the fields to merge on "
                f"({', '.join(f.name for f in merge_fields)})",
            )
        if matches:
            plan.append((matches[0], cells))
        elif planned and None not in key:
            planned[0][1].update(cells)
            plan.append((None, {"__same_as__": id(planned[0][1])}))
        else:
            plan.append((None, cells))
    # updates add no records: at the cap they still succeed, and only a request creating some fails
    emulator.base(request.match_info["base"]).admit_creates(
        sum(1 for record, cells in plan if record is None and "__same_as__" not in cells)
    )
    results: list[dict[str, Any]] = []
    created_ids: list[str] = []
    updated_ids: list[str] = []
    made: dict[int, Record] = {}
    for record, cells in plan:
        if record is None and "__same_as__" in cells:
            record = made[cells["__same_as__"]]
        elif record is None:
            record = Record(new_id("rec"), iso_now(), cells)
            table.records[record.id] = record
            made[id(cells)] = record
            created_ids.append(record.id)
        else:
            if replace:
                record.cells = {}
            record.cells.update(cells)
            updated_ids.append(record.id)
        results.append(table.render(record, by_id))
    emulator.traffic[request.match_info["base"]].writes += 1
    answer: dict[str, Any] = {"records": results}
    if upsert is not None:
        answer["createdRecords"] = created_ids
        answer["updatedRecords"] = sorted(set(updated_ids), key=updated_ids.index)
    return web.json_response(answer)


async def update_record(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    table = emulator.table(request.match_info["base"], request.match_info["table"])
    record = _record(table, request.match_info["record"])
    body = await _json(request)
    cells = _write_cells(table, body.get("fields", {}), _flag(body.get("typecast")))
    if request.method == "PUT":
        record.cells = {}
    record.cells.update(cells)
    emulator.traffic[request.match_info["base"]].writes += 1
    return web.json_response(table.render(record, _flag(body.get("returnFieldsByFieldId"))))


def _record(table: Table, record_id: str) -> Record:
    record = table.records.get(record_id)
    if record is None:
        raise ApiError(404, "MODEL_ID_NOT_FOUND", "Record not found")
    return record


async def get_record(request: web.Request) -> web.Response:
    table = request.app[EMULATOR].table(request.match_info["base"], request.match_info["table"])
    record = _record(table, request.match_info["record"])
    return web.json_response(table.render(record, _flag(request.query.get("returnFieldsByFieldId"))))


async def delete_record(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    table = emulator.table(request.match_info["base"], request.match_info["table"])
    record = _record(table, request.match_info["record"])
    del table.records[record.id]
    return web.json_response({"deleted": True, "id": record.id})


async def delete_records(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    table = emulator.table(request.match_info["base"], request.match_info["table"])
    ids = request.query.getall("records[]", [])
    if not ids or len(ids) > MAX_RECORDS_PER_WRITE:
        raise ApiError(422, *INVALID_REQUEST)
    for record_id in ids:
        _record(table, record_id)
    for record_id in ids:
        del table.records[record_id]
    return web.json_response({"records": [{"deleted": True, "id": r} for r in ids]})


def _list_options(query: Mapping[str, Any], body: dict[str, Any] | None) -> dict[str, Any]:
    """Listing options from a GET query string or a POST listRecords body, in one shape."""
    if body is not None:
        sort = body.get("sort") or []
        return {
            "pageSize": body.get("pageSize"),
            "maxRecords": body.get("maxRecords"),
            "offset": body.get("offset"),
            "filterByFormula": body.get("filterByFormula"),
            "fields": body.get("fields"),
            "sort": sort,
            "returnFieldsByFieldId": _flag(body.get("returnFieldsByFieldId")),
            "cellFormat": body.get("cellFormat", "json"),
        }
    sort, i = [], 0
    while f"sort[{i}][field]" in query:
        sort.append({"field": query[f"sort[{i}][field]"], "direction": query.get(f"sort[{i}][direction]", "asc")})
        i += 1
    return {
        "pageSize": query.get("pageSize"),
        "maxRecords": query.get("maxRecords"),
        "offset": query.get("offset"),
        "filterByFormula": query.get("filterByFormula"),
        "fields": query.getall("fields[]", None) if hasattr(query, "getall") else None,
        "sort": sort,
        "returnFieldsByFieldId": _flag(query.get("returnFieldsByFieldId")),
        "cellFormat": query.get("cellFormat", "json"),
    }


def _int_option(value: Any, name: str, upper: int | None = None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(422, "INVALID_REQUEST_UNKNOWN", f"Invalid request: {name} must be an integer") from None
    if number < 1 or (upper is not None and number > upper):
        raise ApiError(422, "INVALID_REQUEST_UNKNOWN", f"Invalid request: {name} must be between 1 and {upper}")
    return number


async def list_records(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    table = emulator.table(request.match_info["base"], request.match_info["table"])
    body = await _json(request) if request.method == "POST" else None
    options = _list_options(request.query, body)
    page_size = _int_option(options["pageSize"], "pageSize", MAX_PAGE_SIZE) or MAX_PAGE_SIZE
    max_records = _int_option(options["maxRecords"], "maxRecords")
    if options["cellFormat"] != "json":
        raise ApiError(422, "INVALID_REQUEST_UNKNOWN", "Invalid request: only cellFormat=json is emulated")
    offset = options["offset"]
    if offset:
        ids = emulator._cursors.get(offset.split("/")[0])
        if ids is None:
            raise ApiError(422, "LIST_RECORDS_ITERATOR_NOT_AVAILABLE")
        start = ids.index(offset.split("/")[1]) if "/" in offset and offset.split("/")[1] in ids else None
        if start is None:
            raise ApiError(422, "LIST_RECORDS_ITERATOR_NOT_AVAILABLE")
        cursor = offset.split("/")[0]
    else:
        ids = _select(table, options)
        if max_records is not None:
            ids = ids[:max_records]
        start, cursor = 0, "itr" + secrets.token_hex(7)
    page = ids[start : start + page_size]
    only = set(options["fields"]) if options["fields"] else None
    for name in only or ():
        if table.field(name) is None:
            raise ApiError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
    answer: dict[str, Any] = {
        "records": [
            table.render(table.records[r], options["returnFieldsByFieldId"], only) for r in page if r in table.records
        ]
    }
    if start + page_size < len(ids):
        emulator._cursors[cursor] = ids
        answer["offset"] = f"{cursor}/{ids[start + page_size]}"
    return web.json_response(answer)


def _select(table: Table, options: dict[str, Any]) -> list[str]:
    records = list(table.records.values())
    text = options["filterByFormula"]
    if text:
        try:
            tree = formula.parse(text)
            unknown = sorted(name for name in formula.field_names(tree) if table.field(name) is None)
            if unknown:
                raise formula.FormulaError("unknown", unknown)
            records = [r for r in records if formula.keeps(formula.evaluate(tree, table.by_name(r), r.id))]
        except formula.FormulaError as exc:
            detail = (
                f"Unknown field names: {', '.join(n.lower() for n in exc.unknown_fields)}"
                if exc.unknown_fields
                else str(exc)
            )
            raise ApiError(
                422, "INVALID_FILTER_BY_FORMULA", f"The formula for filtering records is invalid: {detail}"
            ) from None
    for rule in reversed(options["sort"] or []):
        target = table.field(rule.get("field", "")) if isinstance(rule, dict) else None
        if target is None:
            raise ApiError(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{rule}"')
        present = [r for r in records if r.cells.get(target.id) not in (None, "")]
        blank = [r for r in records if r.cells.get(target.id) in (None, "")]
        present.sort(key=lambda r: r.cells[target.id], reverse=rule.get("direction") == "desc")
        records = present + blank
    return [r.id for r in records]


# -- metadata --------------------------------------------------------------------------------------


async def list_bases(request: web.Request) -> web.Response:
    bases = request.app[EMULATOR].bases.values()
    return web.json_response({"bases": [{"id": b.id, "name": b.name, "permissionLevel": "create"} for b in bases]})


async def base_schema(request: web.Request) -> web.Response:
    base = request.app[EMULATOR].base(request.match_info["base"])
    visible = "visibleFieldIds" in request.query.getall("include", [])
    return web.json_response({"tables": [t.model(visible) for t in base.tables]})


async def create_table(request: web.Request) -> web.Response:
    base = request.app[EMULATOR].base(request.match_info["base"])
    body = await _json(request)
    name, configs = body.get("name"), body.get("fields")
    if not isinstance(name, str) or not name.strip() or not isinstance(configs, list) or not configs:
        raise ApiError(422, *INVALID_REQUEST)
    if any(t.name.lower() == name.lower() for t in base.tables):
        raise ApiError(422, "DUPLICATE_TABLE_NAME", f'Table name "{name}" already exists')
    fields: list[Any] = []
    for config in configs:
        fields.append(field_from_config(config, fields))
    table = Table(new_id("tbl"), name, fields, body.get("description"))
    base.tables.append(table)
    return web.json_response(table.model())


async def create_field(request: web.Request) -> web.Response:
    table = request.app[EMULATOR].table(request.match_info["base"], request.match_info["table"])
    new = field_from_config(await _json(request), table.fields)
    table.fields.append(new)
    return web.json_response(new.model())


async def update_field(request: web.Request) -> web.Response:
    table = request.app[EMULATOR].table(request.match_info["base"], request.match_info["table"])
    target = table.field(request.match_info["field"])
    if target is None:
        raise NOT_FOUND_MODEL
    body = await _json(request)
    name = body.get("name")
    if name is not None:
        if (
            not isinstance(name, str)
            or not name.strip()
            or any(f is not target and f.name.lower() == name.lower() for f in table.fields)
        ):
            raise ApiError(422, "DUPLICATE_OR_EMPTY_FIELD_NAME", f'Field name "{name}" is empty or already exists')
        target.name = name
    if "description" in body:
        target.description = body["description"]
    return web.json_response(target.model())


# -- control ---------------------------------------------------------------------------------------


async def control_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR].stats())


async def control_faults(request: web.Request) -> web.Response:
    """Set faults: {"status": 503, "count": 3 | "seconds": 10}, {"latency": 0.5}, {"down_seconds": 5},
    {"billing_exceeded": true}, {"refuse_value": "text"}, {"unlock": true}, {"clear": true}."""
    emulator = request.app[EMULATOR]
    body = await request.json()
    now = emulator.clock()
    faults = emulator.faults
    if body.get("clear"):
        emulator.faults = faults = Faults()
    if "status" in body:
        faults.status = body["status"]
        faults.status_count = body.get("count")
        faults.status_until = now + body["seconds"] if body.get("seconds") is not None else None
    if "latency" in body:
        faults.latency = float(body["latency"])
    if "down_seconds" in body:
        faults.down_until = now + float(body["down_seconds"])
    if "billing_exceeded" in body:
        faults.billing_exceeded = bool(body["billing_exceeded"])
    if "refuse_value" in body:
        faults.refuse_value = body["refuse_value"]
    if body.get("unlock"):
        for traffic in emulator.traffic.values():
            traffic.locked_until = 0.0
            traffic.arrivals.clear()
    return web.json_response({"ok": True})


async def control_records(request: web.Request) -> web.Response:
    """Every record of a table, by field name, without touching the base's rate limit (tests, demos)."""
    emulator = request.app[EMULATOR]
    try:
        table = emulator.table(request.query.get("base", ""), request.query.get("table", ""))
    except ApiError as exc:
        return _error(exc)
    return web.json_response({"records": [table.by_name(r) for r in table.records.values()]})


async def control_add_record(request: web.Request) -> web.Response:
    """{"base", "table", "fields"}: a record typed in by hand, with no check that its key is unique (a
    duplicated key row) nor against the cap; not rate-limited."""
    body = await request.json()
    try:
        table = request.app[EMULATOR].table(body.get("base", ""), body.get("table", ""))
        cells = _write_cells(table, body.get("fields", {}), typecast=True)
    except ApiError as exc:
        return _error(exc)
    record = Record(new_id("rec"), iso_now(), cells)
    table.records[record.id] = record
    return web.json_response(table.render(record))


async def control_plan(request: web.Request) -> web.Response:
    """{"base", "max_records": N | null, "error": {"status", "type", "message"}}: the base's records cap,
    changed at run time (an operator upgrading the plan or deleting records raises it)."""
    body = await request.json()
    try:
        base = request.app[EMULATOR].base(body.get("base", ""))
    except ApiError as exc:
        return _error(exc)
    if "max_records" in body:
        base.max_records = None if body["max_records"] is None else int(body["max_records"])
    if "error" in body:
        base.cap_error = {**base.cap_error, **body["error"]}
    return web.json_response({"max_records": base.max_records, "records": base.record_count, "error": base.cap_error})


async def control_rename_field(request: web.Request) -> web.Response:
    """{"base", "table", "field", "name"}: what an operator does in the Airtable UI (not rate-limited)."""
    body = await request.json()
    try:
        table = request.app[EMULATOR].table(body.get("base", ""), body.get("table", ""))
    except ApiError as exc:
        return _error(exc)
    target = table.field(body.get("field", ""))
    if target is None:
        return _error(NOT_FOUND_MODEL)
    target.name = body["name"]
    return web.json_response(target.model())


async def control_base(request: web.Request) -> web.Response:
    base = request.app[EMULATOR].add_base((await request.json()).get("id"))
    return web.json_response({"id": base.id})


def create_app(emulator: Emulator) -> web.Application:
    app = web.Application(middlewares=[airtable_middleware], client_max_size=8 * 2**20)
    app[EMULATOR] = emulator
    records = "/v0/{base:app[A-Za-z0-9]+}/{table}"
    meta = "/v0/meta/bases/{base}/tables"
    app.router.add_get("/v0/meta/bases", list_bases)
    app.router.add_get(meta, base_schema)
    app.router.add_post(meta, create_table)
    app.router.add_post(meta + "/{table}/fields", create_field)
    app.router.add_patch(meta + "/{table}/fields/{field}", update_field)
    app.router.add_get(records, list_records)
    app.router.add_post(records + "/listRecords", list_records)
    app.router.add_post(records, create_records)
    app.router.add_patch(records, update_records)
    app.router.add_put(records, update_records)
    app.router.add_delete(records, delete_records)
    app.router.add_get(records + "/{record}", get_record)
    app.router.add_patch(records + "/{record}", update_record)
    app.router.add_put(records + "/{record}", update_record)
    app.router.add_delete(records + "/{record}", delete_record)
    app.router.add_get("/_emulator/stats", control_stats)
    app.router.add_post("/_emulator/faults", control_faults)
    app.router.add_post("/_emulator/bases", control_base)
    app.router.add_get("/_emulator/records", control_records)
    app.router.add_post("/_emulator/records", control_add_record)
    app.router.add_post("/_emulator/plan", control_plan)
    app.router.add_post("/_emulator/rename-field", control_rename_field)
    return app
