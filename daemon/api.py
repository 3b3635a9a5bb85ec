"""The bot-facing API (/api/v1) on the webhook's HTTP server: what the chatbot knows that SendPulse
does not tell us (intent, response, processing time, escalations handled by agents).

Writes go through the journal like a webhook: answered once committed, delivered to both sinks,
idempotent on the id (a POST) or on the Idempotency-Key header (a PATCH; without one every PATCH
applies, in order). Reads come from PostgreSQL, or when it cannot answer from the journal, then
from Airtable (daemon.reads); the response names the source.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from loguru import logger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from daemon import reads
from daemon.events import (
    API_CONVERSATION_UPDATE,
    API_ESCALATION,
    API_ESCALATION_UPDATE,
    API_INTERACTION,
    EARLIEST_YEAR,
    LATEST_YEAR,
    api_event,
    digits_only,
    has_control,
    storable_text,
)
from daemon.journal import AppendResult, JournalUnavailable
from daemon.reads import CONVERSATION_FIELDS, INTERACTION_FIELDS, READ_LIMIT, Answer, Stores
from daemon.records import api_interaction_id, api_update_prefix
from daemon.sinks.base import SinkError
from daemon.webhook import Unreadable, header_bytes, read_body

PREFIX = "/api/v1"
DEFAULT_READ_LIMIT = 100
YEARS = (EARLIEST_YEAR, LATEST_YEAR)  # outside: a unit mistake (seconds for milliseconds, a zero date), not an event


def _no_control(value: str) -> str:
    if has_control(value):
        raise ValueError("must not hold a control character")
    return value


# Spelt out rather than \s and \S, which Python, pydantic's Rust regex and OpenAPI's ECMA dialect read
# differently: no control character anywhere, no space of any kind first.
ID_PATTERN = (
    r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
    r"[^\x00-\x1f\x7f-\x9f]*$"
)
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=ID_PATTERN), AfterValidator(_no_control)]
# pydantic refuses a lone surrogate in a str field (422); only metadata's free values need cleaning.
Short = Annotated[str, StringConstraints(max_length=1000)]
Long = Annotated[str, StringConstraints(max_length=100_000)]
METADATA_DEPTH = 32
Tag = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^,\x00]+$")]
Priority = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    @field_validator("customerPhone", check_fields=False)
    @classmethod
    def _phone_has_digits(cls, value: str | None) -> str | None:
        if value is not None and not digits_only(value):
            raise ValueError("has no digits")
        return value


def _date_text(value: Any) -> Any:
    # pydantic would also read a number, or a string of digits, as seconds since 1970.
    if not isinstance(value, str) or not value[:4].isascii() or not value[:4].isdigit() or value[4:5] != "-":
        raise ValueError("must be an ISO 8601 date-time string, e.g. 2026-11-27T10:00:00Z")
    return value


def _aware(value: datetime) -> datetime:
    # The year as written: converting 9999-12-31T23:00-01:00 to UTC first would overflow.
    if not YEARS[0] <= value.year <= YEARS[1]:
        raise ValueError(f"is not a plausible time (years {YEARS[0]} to {YEARS[1]})")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


AwareTime = Annotated[
    datetime,
    BeforeValidator(_date_text),
    AfterValidator(_aware),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": f"^(2[01][0-9]{{2}}|{YEARS[1]})-",
            "description": f"ISO 8601, years {YEARS[0]} to {YEARS[1]}; without an offset it is UTC",
        }
    ),
]


def _whole(value: Any) -> Any:
    # JSON Schema's integer is any number without a fraction (12.0 is 12); false and "12" are not numbers.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Milliseconds = Annotated[int, Strict(), Field(ge=0, le=2_147_483_647), BeforeValidator(_whole)]
PHONE_SCHEMA: JsonDict = {"pattern": "[0-9]", "description": "any formatting, at least one digit"}


class InteractionIn(_Body):
    id: Id
    conversationId: Id
    messageId: Id | None = None
    customerPhone: Short | None = Field(default=None, json_schema_extra=PHONE_SCHEMA)
    content: Long | None = None
    direction: Literal["inbound", "outbound"]
    intent: Short | None = None
    response: Long | None = None
    processingTime: Milliseconds | None = Field(default=None, description="milliseconds")
    status: Literal["sent", "delivered", "read", "failed"] | None = None
    errorMessage: Long | None = None
    timestamp: AwareTime | None = None


class EscalationIn(_Body):
    id: Id
    conversationId: Id
    ticketId: Id | None = None
    reason: Long | None = None
    priority: Priority = "MEDIUM"
    status: Literal["pending", "assigned", "resolved"] = "pending"
    customerPhone: Short | None = Field(default=None, json_schema_extra=PHONE_SCHEMA)
    assignedAgent: Short | None = None
    notes: Long | None = None
    createdAt: AwareTime | None = None


class _Patch(_Body):
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    @model_validator(mode="after")
    def _something(self) -> _Patch:
        if not self.model_fields_set:
            raise ValueError("names no field to change")
        return self


class EscalationPatch(_Patch):
    status: Literal["pending", "assigned", "resolved"] | None = None
    assignedAgent: Short | None = None
    resolvedAt: AwareTime | None = None
    notes: Long | None = None


class ConversationPatch(_Patch):
    intent: Short | None = None
    sentiment: Short | None = None
    priority: Priority | None = None
    assignedAgent: Short | None = None
    tags: list[Tag] | None = Field(default=None, max_length=50)
    metadata: dict[str, Any] | None = None
    status: Literal["active", "closed", "escalated"] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_storable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        value = _storable_metadata(value, 1)
        text = json.dumps(value)
        if len(text) > 10_000:
            raise ValueError("is over 10,000 characters as JSON")
        return value


def _storable_metadata(value: Any, depth: int) -> Any:
    """Metadata as every store takes it: strings cleaned; too deep or a number no double holds is refused."""
    if depth > METADATA_DEPTH:
        raise ValueError(f"is nested deeper than {METADATA_DEPTH} levels")
    if isinstance(value, dict):
        return {storable_text(key): _storable_metadata(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable_metadata(item, depth + 1) for item in value]
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("holds a number out of range (1e400 and the like)")
    return value


# -- the stores the reads fall back through -------------------------------------------------------

ApiStores = Stores  # its journal a Journal: the API writes through it

JOURNAL_KEY = web.AppKey("api_stores", ApiStores)
TOKEN_KEY = web.AppKey("api_token", bytes)


def add_api(app: web.Application, token: str, stores: ApiStores) -> None:
    app[TOKEN_KEY] = token.encode()
    app[JOURNAL_KEY] = stores
    app.router.add_get(PREFIX + "/openapi.json", handle_openapi)
    app.router.add_post(PREFIX + "/interactions", post_interaction)
    app.router.add_post(PREFIX + "/escalations", post_escalation)
    app.router.add_patch(PREFIX + "/escalations/{id}", patch_escalation)
    app.router.add_patch(PREFIX + "/conversations/{id}", patch_conversation)
    app.router.add_get(PREFIX + "/conversations/{id}", get_conversation)
    app.router.add_get(PREFIX + "/conversations/{id}/interactions", get_interactions)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class _Refused(Exception):
    def __init__(self, response: web.Response):
        self.response = response


def _authorize(request: web.Request) -> None:
    expected = request.app[TOKEN_KEY]
    if not expected:
        raise _Refused(_error(401, "the API is disabled: set [server] api_token"))
    header = request.headers.get("Authorization", "")
    offered = header[7:] if header.lower().startswith("bearer ") else request.headers.get("X-Api-Token", "")
    if not hmac.compare_digest(header_bytes(offered), expected):
        raise _Refused(_error(401, "missing or wrong api token (Authorization: Bearer TOKEN)"))


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        raw = await read_body(request)
    except Unreadable as unreadable:
        raise _Refused(unreadable.response) from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise _Refused(_error(400, "the body is not JSON (or nested too deeply)")) from None
    try:
        return model.model_validate(data)
    except RecursionError:
        raise _Refused(
            _error(422, "validation failed", fields=[{"loc": ["body"], "msg": "nested too deeply", "type": "too_deep"}])
        ) from None
    except ValidationError as exc:
        fields = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise _Refused(_error(422, "validation failed", fields=fields)) from None


_PATH_ID = TypeAdapter(Id)


def _path_id(request: web.Request) -> str:
    """The path's {id}, held to the same rules as an id in a body."""
    try:
        return _PATH_ID.validate_python(request.match_info["id"])
    except ValidationError as exc:
        fields = [{"loc": ["path", "id", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise _Refused(_error(422, "validation failed", fields=fields)) from None


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _route(handler: Handler) -> Handler:
    """Authorization, bad bodies and an unwritable journal answered the same way everywhere."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            _authorize(request)
            return await handler(request)
        except _Refused as refused:
            return refused.response
        except JournalUnavailable as exc:
            return _error(503, f"journal cannot write, nothing was accepted: {exc}")

    wrapped.__name__ = handler.__name__
    return wrapped


async def _journal(
    request: web.Request,
    title: str,
    dedup_key: str,
    body: BaseModel,
    *,
    conversation_id: str | None,
    phone: str | None = None,
    message_id: str | None = None,
    direction: str | None = None,
    text: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Journal one API write (durably); False when its key was already there (a retry)."""
    now = datetime.now(UTC)
    raw = json.dumps(
        body.model_dump(mode="json", exclude_unset=True)
        | {"id": getattr(body, "id", None) or request.match_info.get("id")},
        sort_keys=True,
        ensure_ascii=False,
    )
    event = api_event(
        title,
        dedup_key,
        raw,
        conversation_id=conversation_id,
        occurred_at=at or now,
        received_at=now,
        phone=digits_only(phone) if phone else None,
        message_id=message_id,
        direction=direction,
        text=text,
    )
    result: AppendResult = await request.app[JOURNAL_KEY].journal.append([event])
    if result.rejected:  # the journal could not store it even cleaned (see Journal._commit_isolated)
        raise _Refused(
            _error(
                422,
                "this write cannot be stored: it is kept in the journal's quarantine with the "
                "reason; nothing was recorded",
            )
        )
    return result.accepted == 1


def _patch_key(request: web.Request, kind: str, body: BaseModel) -> str:
    given = request.headers.get("Idempotency-Key")
    suffix = hashlib.sha256(header_bytes(given)).hexdigest()[:32] if given else uuid.uuid4().hex
    return api_update_prefix(kind, request.match_info["id"]) + suffix


@_route
async def post_interaction(request: web.Request) -> web.Response:
    body: InteractionIn = await _body(request, InteractionIn)
    new = await _journal(
        request,
        API_INTERACTION,
        f"api:interaction:{body.id}",
        body,
        conversation_id=body.conversationId,
        phone=body.customerPhone,
        message_id=body.messageId,
        direction=body.direction,
        text=body.content,
        at=body.timestamp,
    )
    return web.json_response(
        {
            "id": body.id,
            "interactionId": api_interaction_id(body.id, body.messageId, body.direction),
            "conversationId": body.conversationId,
            "duplicate": not new,
        },
        status=201 if new else 200,
    )


@_route
async def post_escalation(request: web.Request) -> web.Response:
    body: EscalationIn = await _body(request, EscalationIn)
    new = await _journal(
        request,
        API_ESCALATION,
        f"api:escalation:{body.id}",
        body,
        conversation_id=body.conversationId,
        phone=body.customerPhone,
        text=body.notes,
        at=body.createdAt,
    )
    return web.json_response(
        {"id": body.id, "conversationId": body.conversationId, "duplicate": not new}, status=201 if new else 200
    )


@_route
async def patch_escalation(request: web.Request) -> web.Response:
    escalation_id = _path_id(request)
    body: EscalationPatch = await _body(request, EscalationPatch)
    if not await _escalation_known(request.app[JOURNAL_KEY], escalation_id):
        return _error(404, f"no escalation {escalation_id}")
    new = await _journal(
        request, API_ESCALATION_UPDATE, _patch_key(request, "escalation", body), body, conversation_id=None
    )
    return web.json_response({"id": escalation_id, "duplicate": not new})


@_route
async def patch_conversation(request: web.Request) -> web.Response:
    conversation_id = _path_id(request)
    body: ConversationPatch = await _body(request, ConversationPatch)
    if not await _conversation_known(request.app[JOURNAL_KEY], conversation_id):
        return _error(404, f"no conversation {conversation_id} in any store")
    new = await _journal(
        request,
        API_CONVERSATION_UPDATE,
        _patch_key(request, "conversation", body),
        body,
        conversation_id=conversation_id,
    )
    return web.json_response({"id": conversation_id, "duplicate": not new})


async def _conversation_known(stores: ApiStores, conversation_id: str) -> bool:
    """Whether a store knows it (the journal, PostgreSQL, else Airtable); 503 when one that might could not say."""
    if await stores.journal.conversations([conversation_id]):
        return True
    problems = []
    if stores.postgres is not None:
        try:
            async with stores.postgres() as pg:
                if await pg.existing("conversations", [conversation_id]):
                    return True
        except SinkError as exc:
            problems.append(f"postgres: {exc}")
    airtable = stores.airtable()
    if airtable is not None:
        try:
            if await reads.airtable_records_of(*airtable, "conversations", conversation_id, 1):
                return True
        except SinkError as exc:
            problems.append(f"airtable: {exc}")
    if problems:
        raise _Refused(
            _error(503, f"cannot tell whether conversation {conversation_id} exists: " + "; ".join(problems))
        )
    return False


async def _escalation_known(stores: ApiStores, escalation_id: str) -> bool:
    if await stores.journal.has_event(f"api:escalation:{escalation_id}"):
        return True
    if stores.postgres is None:
        return False
    try:
        async with stores.postgres() as pg:
            return bool(await pg.existing("escalations", [escalation_id]))
    except SinkError as exc:
        raise _Refused(_error(503, f"cannot tell whether escalation {escalation_id} exists: {exc}")) from None


# -- reads -----------------------------------------------------------------------------------------


async def _read(answer: Answer, absent: str) -> tuple[str, Any]:
    """The store that answered and what it found; else a 404 saying `absent`, and why a store was not asked."""
    if answer.problems or answer.not_asked:
        logger.warning("api read: {}", "; ".join(answer.problems + answer.not_asked))
    if answer.source is None:
        raise _Refused(_error(404, absent + (f" ({'; '.join(answer.not_asked)})" if answer.not_asked else "")))
    return answer.source, answer.found


@_route
async def get_conversation(request: web.Request) -> web.Response:
    conversation_id = _path_id(request)
    source, found = await _read(
        await reads.conversation(request.app[JOURNAL_KEY], conversation_id),
        f"no conversation {conversation_id} in any store that answered",
    )
    return web.json_response({"source": source, "conversation": found})


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(DEFAULT_READ_LIMIT))
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= READ_LIMIT):
        raise _Refused(
            _error(
                422,
                "validation failed",
                fields=[
                    {
                        "loc": ["query", "limit"],
                        "msg": f"must be a whole number from 1 to {READ_LIMIT}",
                        "type": "limit",
                    }
                ],
            )
        )
    return int(text)


@_route
async def get_interactions(request: web.Request) -> web.Response:
    conversation_id = _path_id(request)
    limit = _limit(request)
    source, found = await _read(
        await reads.interactions(request.app[JOURNAL_KEY], conversation_id, limit),
        f"no conversation {conversation_id} in any store that answered",
    )
    return web.json_response({"source": source, "conversationId": conversation_id, "interactions": found})


# -- OpenAPI ---------------------------------------------------------------------------------------


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


TEXT = _nullable("string")
# What the answers hold, for the document. Reads may come from Airtable, where an operator can empty
# any field: only the keys are promised there, so the values are nullable.
ANSWERS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {"type": "string"},
            "fields": {
                "type": "array",
                "description": "what failed validation (422)",
                "items": {
                    "type": "object",
                    "required": ["loc", "msg", "type"],
                    "properties": {
                        "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                        "msg": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            },
        },
    },
    "InteractionAccepted": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "interactionId", "conversationId", "duplicate"],
        "properties": {
            "id": {"type": "string"},
            "interactionId": {"type": "string", "description": "the row it became"},
            "conversationId": {"type": "string"},
            "duplicate": {"type": "boolean"},
        },
    },
    "EscalationAccepted": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "conversationId", "duplicate"],
        "properties": {
            "id": {"type": "string"},
            "conversationId": {"type": "string"},
            "duplicate": {"type": "boolean"},
        },
    },
    "Updated": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "duplicate"],
        "properties": {
            "id": {"type": "string"},
            "duplicate": {"type": "boolean", "description": "this Idempotency-Key was already applied"},
        },
    },
    "Conversation": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "conversationId",
            "customerPhone",
            "customerName",
            "status",
            "startedAt",
            "lastActivity",
            "messageCount",
        ],
        "properties": {name: TEXT for _, name, _ in CONVERSATION_FIELDS}
        | {
            "conversationId": {"type": "string"},
            "messageCount": _nullable("integer"),
            "tags": {"type": ["array", "null"], "items": {"type": "string"}},
            "metadata": {"description": "an object; from Airtable its Metadata text when that is not JSON"},
        },
    },
    "Interaction": {
        "type": "object",
        "additionalProperties": False,
        "required": [name for _, name, _ in INTERACTION_FIELDS],
        "properties": {name: TEXT for _, name, _ in INTERACTION_FIELDS} | {"processingTime": _nullable("integer")},
    },
}
SOURCE = {"type": "string", "enum": ["postgres", "journal", "airtable"], "description": "the store that answered"}
ANSWERS["ConversationRead"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source", "conversation"],
    "properties": {"source": SOURCE, "conversation": {"$ref": "#/components/schemas/Conversation"}},
}
ANSWERS["InteractionsRead"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source", "conversationId", "interactions"],
    "properties": {
        "source": SOURCE,
        "conversationId": {"type": "string"},
        "interactions": {
            "type": "array",
            "description": "oldest first",
            "items": {"$ref": "#/components/schemas/Interaction"},
        },
    },
}

SECURITY: list[dict[str, list[str]]] = [
    {"bearer": []},
    {"apiToken": []},
]  # Authorization: Bearer TOKEN, or X-Api-Token: TOKEN
FAILURES = {
    "400": "the body is not JSON",
    "401": "missing or wrong api token, or the API is disabled",
    "404": "no store that answered knows it",
    "413": "the body is over [server] max_body_bytes",
    "422": "validation failed: `fields` says where; nothing was written",
    "503": "the journal cannot write (or, for an escalation's PATCH, PostgreSQL cannot tell whether it exists): "
    "nothing was written",
}


def openapi() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document: request bodies from the pydantic models, every status each route answers."""
    schemas: dict[str, Any] = dict(ANSWERS)
    for model in (InteractionIn, EscalationIn, EscalationPatch, ConversationPatch):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    def answers(ok: dict[str, tuple[str, str]], *failures: str) -> dict[str, Any]:
        out = {
            status: {
                "description": text,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
            }
            for status, (name, text) in ok.items()
        }
        return out | {
            status: {
                "description": FAILURES[status],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
            for status in failures
        }

    def write(model: str, ok: dict[str, tuple[str, str]], *failures: str) -> dict[str, Any]:
        return {
            "security": SECURITY,
            "responses": answers(ok, "400", "401", *failures, "413", "422", "503"),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
            },
        }

    path_id = [{"name": "id", "in": "path", "required": True, "schema": _PATH_ID.json_schema()}]
    limit = {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": READ_LIMIT, "default": DEFAULT_READ_LIMIT},
    }
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "a PATCH sent again with the same key is applied once; without one, every PATCH is",
    }
    updated = {"200": ("Updated", "recorded")}

    def created(name: str) -> dict[str, tuple[str, str]]:
        return {"201": (name, "recorded"), "200": (name, "already recorded under this id (duplicate)")}

    return {
        "openapi": "3.1.0",
        "info": {"title": "chatledger bot API", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiToken": {"type": "apiKey", "in": "header", "name": "X-Api-Token"},
            },
        },
        "paths": {
            PREFIX + "/interactions": {"post": write("InteractionIn", created("InteractionAccepted"))},
            PREFIX + "/escalations": {"post": write("EscalationIn", created("EscalationAccepted"))},
            PREFIX + "/escalations/{id}": {
                "patch": {**write("EscalationPatch", updated, "404"), "parameters": [*path_id, idempotency]}
            },
            PREFIX + "/conversations/{id}": {
                "patch": {**write("ConversationPatch", updated, "404"), "parameters": [*path_id, idempotency]},
                "get": {
                    "security": SECURITY,
                    "parameters": path_id,
                    "responses": answers({"200": ("ConversationRead", "found")}, "401", "404", "422"),
                },
            },
            PREFIX + "/conversations/{id}/interactions": {
                "get": {
                    "security": SECURITY,
                    "parameters": [*path_id, limit],
                    "responses": answers({"200": ("InteractionsRead", "found")}, "401", "404", "422"),
                }
            },
        },
    }


async def handle_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi())
