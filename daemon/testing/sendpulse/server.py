"""The emulator's HTTP side: SendPulse's OAuth and WhatsApp read API, its limits and its faults.

Built from the project's SendPulse API reference (client-credentials tokens that expire, bots, chats,
a contact's messages paged by size/skip/search_after/order, 10 requests/s per account answered 429
beyond) so that chatledger's reconciliation can be pointed at it. Control routes under `/_emulator/`
(no auth, not rate-limited) add bots, contacts and messages, post the webhook SendPulse would have
sent (once, never retried), change statuses, inject faults and read counters.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from daemon.testing.sendpulse.model import (
    IN,
    NEW,
    OUT,
    SENT,
    ApiError,
    Bot,
    Contact,
    Message,
    digits,
    message_data,
    new_id,
    new_wamid,
    parse_time,
    webhook_body,
)

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# The default `order` is undocumented; newest first is what an inbox shows, and it makes a client that
# forgets to ask for `asc` fail visibly.
DEFAULT_ORDER = "desc"
UNAUTHORIZED = ApiError(401, "Unauthorized")
RATE_LIMITED = ApiError(429, "Too Many Requests")


@dataclass
class Faults:
    """What the emulator does wrong on purpose; set through /_emulator/faults."""

    status: int | None = None  # answer this 5xx to every API request ...
    status_count: int | None = None  # ... this many times (None: until cleared)
    status_until: float | None = None  # ... or until this monotonic moment
    latency: float = 0.0  # seconds added to every API request
    down_until: float | None = None  # drop connections until then


class Emulator:
    """State shared by every request: credentials, tokens, bots, contacts, limits, faults, counters."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        token_ttl: float = 3600,
        rate: int = 10,
        window: float = 1.0,
        per_minute: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.credentials = {client_id: client_secret}
        self.token_ttl = token_ttl
        self.rate = rate
        self.window = window
        self.per_minute = per_minute
        self.clock = clock
        self.tokens: dict[str, float] = {}  # access token -> when it expires (clock)
        self.bots: dict[str, Bot] = {}
        self.contacts: dict[str, Contact] = {}
        self.messages: dict[str, Message] = {}
        self.faults = Faults()
        self.counters: Counter[str] = Counter()
        self.routes: Counter[str] = Counter()
        self.webhooks: list[dict[str, Any]] = []  # one entry per POST made, with its outcome
        self._arrivals: deque[float] = deque()
        self._minute: deque[float] = deque()

    # -- state ------------------------------------------------------------------------------------

    def add_bot(self, bot_id: str | None = None, name: str = "chatledger", phone: Any = 5511900000000) -> Bot:
        bot = Bot(bot_id or new_id(), name, digits(phone))
        self.bots[bot.id] = bot
        return bot

    def add_contact(
        self,
        bot_id: str,
        phone: Any,
        name: str = "Cliente",
        contact_id: str | None = None,
        created_at: Any = None,
        **details: Any,
    ) -> Contact:
        if bot_id not in self.bots:
            raise ApiError(404, "Bot not found")
        moment = parse_time(created_at) if created_at is not None else _now()
        contact = Contact(contact_id or new_id(moment), bot_id, digits(phone), name, moment, **details)
        if contact.id in self.contacts:
            raise ApiError(400, f"contact {contact.id} exists")
        self.contacts[contact.id] = contact
        return contact

    def add_message(self, contact_id: str, direction: Any, text: str | None = None, **spec: Any) -> Message:
        """A message in a contact's history; `spec`: id, wamid (None: none), created_at, status, data, channel."""
        contact = self.contacts.get(contact_id)
        if contact is None:
            raise ApiError(404, "Contact not found")
        way = {"in": IN, "out": OUT, IN: IN, OUT: OUT}.get(direction)
        if way is None:
            raise ApiError(400, f"direction must be in, out, 1 or 2, not {direction!r}")
        moment = parse_time(spec["created_at"]) if spec.get("created_at") is not None else _now()
        message_id = spec.get("id") or new_id(moment)
        if message_id in self.messages:
            raise ApiError(400, f"message {message_id} exists")
        wamid = spec["wamid"] if "wamid" in spec else new_wamid()
        status = int(spec.get("status") or (NEW if way == IN else SENT))
        if not 1 <= status <= 6:
            raise ApiError(400, f"status must be 1..6, not {status}")
        data = spec.get("data") or message_data(way, text, wamid, contact.phone, moment)
        message = Message(
            message_id,
            contact.id,
            contact.bot_id,
            way,
            status,
            moment,
            data,
            wamid,
            spec.get("channel", "api" if way == OUT else None),
        )
        self.messages[message.id] = message
        contact.add(message)
        return message

    def set_status(self, message_id: str, status: int) -> Message:
        message = self.messages.get(message_id)
        if message is None:
            raise ApiError(404, "Message not found")
        if message.direction != OUT:
            raise ApiError(400, "only an outbound message's status changes")
        if status not in range(1, 7):
            raise ApiError(400, f"status must be 1..6, not {status}")
        message.status = status
        return message

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = self.clock() + self.token_ttl
        self.counters["tokens_issued"] += 1
        return token

    def stats(self) -> dict[str, Any]:
        posted = sum(1 for w in self.webhooks if "status" in w)
        return {
            "requests": self.counters["requests"],
            "rate_limited": self.counters["rate_limited"],
            "unauthorized": self.counters["unauthorized"],
            "tokens_issued": self.counters["tokens_issued"],
            "credentials_refused": self.counters["credentials_refused"],
            "server_errors": self.counters["server_errors"],
            "routes": dict(self.routes),
            "webhooks": {"posted": posted, "failed": len(self.webhooks) - posted},
            "bots": len(self.bots),
            "contacts": len(self.contacts),
            "messages": len(self.messages),
        }

    # -- limits -----------------------------------------------------------------------------------

    def admit(self) -> None:
        """Count a request against the account; past 10 in any second (or the plan's minute), 429."""
        now = self.clock()
        self.counters["requests"] += 1
        while self._arrivals and self._arrivals[0] <= now - self.window:
            self._arrivals.popleft()
        while self._minute and self._minute[0] <= now - 60:
            self._minute.popleft()
        if len(self._arrivals) >= self.rate or (self.per_minute is not None and len(self._minute) >= self.per_minute):
            self.counters["rate_limited"] += 1
            raise RATE_LIMITED
        self._arrivals.append(now)
        self._minute.append(now)

    def authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        expires = self.tokens.get(token) if token else None
        if token is None or expires is None or self.clock() >= expires:
            if token is not None:
                self.tokens.pop(token, None)
            self.counters["unauthorized"] += 1
            raise UNAUTHORIZED

    def contact(self, contact_id: str | None) -> Contact:
        if not contact_id:
            raise ApiError(400, "The given data was invalid.", {"contact_id": ["The contact id field is required."]})
        contact = self.contacts.get(contact_id)
        if contact is None:
            raise ApiError(404, "Contact not found")
        return contact


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


EMULATOR = web.AppKey("emulator", Emulator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION = web.AppKey("session", aiohttp.ClientSession)
BACKGROUND = web.AppKey("background", set[asyncio.Task[Any]])


@web.middleware
async def sendpulse_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    emulator = request.app[EMULATOR]
    if request.path.startswith("/_emulator/"):
        try:
            return await handler(request)
        except ApiError as exc:
            return web.json_response(exc.body(), status=exc.status)
    faults = emulator.faults
    now = emulator.clock()
    if faults.down_until is not None and now < faults.down_until:
        if request.transport is not None:
            request.transport.abort()  # the client sees the connection dropped
        raise web.HTTPServiceUnavailable()
    if faults.latency:
        await asyncio.sleep(faults.latency)
    try:
        emulator.admit()
        emulator.routes[request.path] += 1
        if faults.status is not None and (faults.status_until is None or now < faults.status_until):
            if faults.status_count is None or faults.status_count > 0:
                if faults.status_count is not None:
                    faults.status_count -= 1
                emulator.counters["server_errors"] += 1
                raise ApiError(faults.status, "Internal server error")
        if request.path != "/oauth/access_token":
            emulator.authorize(request)
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            raise ApiError(404, "Not found") from None
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status)


# -- OAuth -----------------------------------------------------------------------------------------


MALFORMED = (
    "The request is missing a required parameter, includes an invalid parameter value, includes a parameter "
    "more than once, or is otherwise malformed."
)


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description, "hint": "", "message": description}, status=status
    )


async def access_token(request: web.Request) -> web.Response:
    """Client credentials, as JSON or a form; wrong ones get the 401 `invalid_client` answer."""
    emulator = request.app[EMULATOR]
    try:
        if request.content_type == "application/json":
            body = json.loads(await request.read() or b"{}")
        else:
            body = dict(await request.post())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _oauth_error(400, "invalid_request", MALFORMED)
    if body.get("grant_type") != "client_credentials":
        return _oauth_error(
            400, "unsupported_grant_type", "The authorization grant type is not supported by the authorization server."
        )
    client_id, secret = body.get("client_id"), body.get("client_secret")
    if not client_id or not secret:
        return _oauth_error(400, "invalid_request", MALFORMED)
    if emulator.credentials.get(str(client_id)) != str(secret):
        emulator.counters["credentials_refused"] += 1
        return _oauth_error(401, "invalid_client", "Client authentication failed")
    return web.json_response(
        {"access_token": emulator.issue_token(), "token_type": "Bearer", "expires_in": int(emulator.token_ttl)}
    )


# -- WhatsApp --------------------------------------------------------------------------------------


def _ok(data: Any) -> web.Response:
    return web.json_response({"success": True, "data": data})


def _int(query: Mapping[str, str], name: str, default: int, low: int, high: int | None = None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, "The given data was invalid.", {name: [f"The {name} must be an integer {bound}."]})
    return value


async def list_bots(request: web.Request) -> web.Response:
    return _ok([bot.render() for bot in request.app[EMULATOR].bots.values()])


async def list_chats(request: web.Request) -> web.Response:
    """A bot's chats, most recently active first (the order is undocumented), paged by skip/size."""
    emulator = request.app[EMULATOR]
    bot_id = request.query.get("bot_id")
    if not bot_id:
        raise ApiError(400, "The given data was invalid.", {"bot_id": ["The bot id field is required."]})
    if bot_id not in emulator.bots:
        raise ApiError(404, "Bot not found")
    size = _int(request.query, "size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    skip = _int(request.query, "skip", 0, 0)
    chats = sorted(
        (c for c in emulator.contacts.values() if c.bot_id == bot_id),
        key=lambda c: (c.last_activity_at, c.id),
        reverse=True,
    )
    return _ok([c.chat() for c in chats[skip : skip + size]])


async def list_messages(request: web.Request) -> web.Response:
    """One contact's messages in `order`; `search_after` (a message id) wins over `skip`."""
    emulator = request.app[EMULATOR]
    contact = emulator.contact(request.query.get("contact_id"))
    size = _int(request.query, "size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    skip = _int(request.query, "skip", 0, 0)
    order = request.query.get("order") or DEFAULT_ORDER
    if order not in ("asc", "desc"):
        raise ApiError(400, "The given data was invalid.", {"order": ["The selected order is invalid."]})
    ordered = contact.messages if order == "asc" else contact.messages[::-1]
    after = request.query.get("search_after")
    if after:
        start = next((i + 1 for i, m in enumerate(ordered) if m.id == after), None)
        if start is None:
            raise ApiError(
                400, "The given data was invalid.", {"search_after": ["The selected search after is invalid."]}
            )
    else:
        start = skip
    return _ok([m.render() for m in ordered[start : start + size]])


async def get_contact(request: web.Request) -> web.Response:
    return _ok(request.app[EMULATOR].contact(request.query.get("id")).render())


# -- control ---------------------------------------------------------------------------------------


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"{}")
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None


async def control_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR].stats())


async def control_faults(request: web.Request) -> web.Response:
    """Set faults: {"status": 503, "count": 3 | "seconds": 10}, {"latency": 0.5}, {"down_seconds": 5},
    {"expire_tokens": true}, {"unlock": true} (forget the last second's requests), {"clear": true}."""
    emulator = request.app[EMULATOR]
    body = await _body(request)
    now = emulator.clock()
    if body.get("clear"):
        emulator.faults = Faults()
    faults = emulator.faults
    if "status" in body:
        faults.status = body["status"]
        faults.status_count = body.get("count")
        faults.status_until = now + body["seconds"] if body.get("seconds") is not None else None
    if "latency" in body:
        faults.latency = float(body["latency"])
    if "down_seconds" in body:
        faults.down_until = now + float(body["down_seconds"])
    if body.get("expire_tokens"):
        emulator.tokens = {token: now for token in emulator.tokens}
    if body.get("unlock"):
        emulator._arrivals.clear()
        emulator._minute.clear()
    return web.json_response({"ok": True})


async def control_bot(request: web.Request) -> web.Response:
    """{"id", "name", "phone"} (all optional): a WhatsApp bot of the account."""
    body = await _body(request)
    try:
        bot = request.app[EMULATOR].add_bot(
            body.get("id"), body.get("name", "chatledger"), body.get("phone", 5511900000000)
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return web.json_response(bot.render())


async def control_contact(request: web.Request) -> web.Response:
    """{"bot_id", "phone", "name", "id", "created_at", "status", "is_chat_opened", "tags", "variables"}."""
    body = await _body(request)
    details = {k: body[k] for k in ("status", "is_chat_opened", "tags", "variables") if k in body}
    try:
        contact = request.app[EMULATOR].add_contact(
            body.get("bot_id", ""),
            body.get("phone", ""),
            body.get("name", "Cliente"),
            body.get("id"),
            body.get("created_at"),
            **details,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return web.json_response(contact.render())


async def control_change_contact(request: web.Request) -> web.Response:
    """{"status": 2, "is_chat_opened": true} changes a contact; {"delete": true} removes it (then 404)."""
    emulator = request.app[EMULATOR]
    contact = emulator.contact(request.match_info["contact"])
    body = await _body(request)
    if body.get("delete"):
        del emulator.contacts[contact.id]
        for message in contact.messages:
            emulator.messages.pop(message.id, None)
        return web.json_response({"deleted": True, "id": contact.id})
    if "status" in body:
        if body["status"] not in (1, 2, 3, 4):
            raise ApiError(400, f"a contact's status is 1..4, not {body['status']!r}")
        contact.status = body["status"]
    if "is_chat_opened" in body:
        contact.is_chat_opened = bool(body["is_chat_opened"])
    return web.json_response(contact.render())


async def control_add_messages(request: web.Request) -> web.Response:
    """One message spec or {"messages": [...], "background": bool}: each {"contact_id", "direction" ("in",
    "out"), "text", "id", "wamid" (null: none), "created_at", "status", "data", "webhook": {"url", "id",
    "wamid", "date_unit", "single", "timeout"}}. All are checked before any is added; each webhook is
    posted once, never retried, before the answer (after it with "background")."""
    emulator = request.app[EMULATOR]
    body = await _body(request)
    specs = body.get("messages") if isinstance(body, dict) and "messages" in body else [body]
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise ApiError(400, "messages must be a list of objects")
    seen = set()
    for spec in specs:
        emulator.contact(spec.get("contact_id"))
        if spec.get("direction") not in ("in", "out", IN, OUT):
            raise ApiError(400, f"direction must be in, out, 1 or 2, not {spec.get('direction')!r}")
        webhook = spec.get("webhook")
        if webhook is not None and not (isinstance(webhook, dict) and isinstance(webhook.get("url"), str)):
            raise ApiError(400, "webhook must be an object with a url")
        if spec.get("id") and (spec["id"] in emulator.messages or spec["id"] in seen):
            raise ApiError(400, f"message {spec['id']} exists")
        seen.add(spec.get("id"))
        try:
            if spec.get("created_at") is not None:
                parse_time(spec["created_at"])
        except ValueError:
            raise ApiError(400, f"created_at is not a date-time: {spec['created_at']!r}") from None
        if spec.get("status") is not None and spec["status"] not in range(1, 7):
            raise ApiError(400, f"status must be 1..6, not {spec['status']!r}")
        if spec.get("data") is not None and not isinstance(spec["data"], dict):
            raise ApiError(400, "data must be an object")
    added = []
    for spec in specs:
        fields = {k: spec[k] for k in ("id", "wamid", "created_at", "status", "data", "channel") if k in spec}
        added.append(
            (
                emulator.add_message(spec["contact_id"], spec["direction"], spec.get("text"), **fields),
                spec.get("webhook"),
            )
        )
    posts = [(message, hook) for message, hook in added if hook is not None]
    outcomes: dict[str, dict[str, Any]] = {}
    if posts and body.get("background"):
        task = asyncio.create_task(_post_all(request.app, posts), name="sendpulse-emulator-webhooks")
        request.app[BACKGROUND].add(task)
        task.add_done_callback(request.app[BACKGROUND].discard)
    else:
        outcomes = await _post_all(request.app, posts)
    return web.json_response(
        {"messages": [{**m.render(), **({"webhook": outcomes[m.id]} if m.id in outcomes else {})} for m, _ in added]}
    )


async def _post_all(app: web.Application, posts: list[tuple[Message, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {message.id: await _post_webhook(app, message, hook) for message, hook in posts}


async def _post_webhook(app: web.Application, message: Message, hook: dict[str, Any]) -> dict[str, Any]:
    """POST the message's webhook once; whatever the answer (or none), it is never sent again."""
    emulator = app[EMULATOR]
    contact = emulator.contacts[message.contact_id]
    body = webhook_body(emulator.bots[contact.bot_id], contact, message, hook)
    outcome: dict[str, Any] = {"message_id": message.id, "url": hook["url"]}
    try:
        timeout = aiohttp.ClientTimeout(total=float(hook.get("timeout", 10)))
        async with app[SESSION].post(hook["url"], json=body, timeout=timeout) as answer:
            await answer.read()
            outcome["status"] = answer.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    emulator.webhooks.append(outcome)
    return {k: v for k, v in outcome.items() if k in ("status", "error")}


async def control_status(request: web.Request) -> web.Response:
    """{"id", "status"}: an outbound message delivered (3), read (4) or failed (6)."""
    body = await _body(request)
    try:
        status = int(body.get("status"))
    except (TypeError, ValueError):
        raise ApiError(400, f"status must be an integer, not {body.get('status')!r}") from None
    return web.json_response(request.app[EMULATOR].set_status(str(body.get("id")), status).render())


async def control_webhooks(request: web.Request) -> web.Response:
    return web.json_response({"webhooks": request.app[EMULATOR].webhooks})


async def control_history(request: web.Request) -> web.Response:
    """A contact's whole history, oldest first, without auth or the rate limit (tests, demos)."""
    contact = request.app[EMULATOR].contact(request.query.get("contact_id"))
    return web.json_response({"messages": [m.render() for m in contact.messages]})


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession()
    background: set[asyncio.Task[Any]] = set()
    app[BACKGROUND] = background
    yield
    for task in list(background):
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await app[SESSION].close()


def create_app(emulator: Emulator) -> web.Application:
    app = web.Application(middlewares=[sendpulse_middleware], client_max_size=64 * 2**20)
    app[EMULATOR] = emulator
    app.cleanup_ctx.append(_client)
    app.router.add_post("/oauth/access_token", access_token)
    app.router.add_get("/whatsapp/bots", list_bots)
    app.router.add_get("/whatsapp/chats", list_chats)
    app.router.add_get("/whatsapp/chats/messages", list_messages)
    app.router.add_get("/whatsapp/contacts/get", get_contact)
    app.router.add_get("/_emulator/stats", control_stats)
    app.router.add_post("/_emulator/faults", control_faults)
    app.router.add_post("/_emulator/bots", control_bot)
    app.router.add_post("/_emulator/contacts", control_contact)
    app.router.add_post("/_emulator/contacts/{contact}", control_change_contact)
    app.router.add_post("/_emulator/messages", control_add_messages)
    app.router.add_get("/_emulator/messages", control_history)
    app.router.add_post("/_emulator/messages/status", control_status)
    app.router.add_get("/_emulator/webhooks", control_webhooks)
    return app
