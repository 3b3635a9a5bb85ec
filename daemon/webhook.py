"""The public HTTP side: the SendPulse webhook and /healthz."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from aiohttp import web, web_protocol
from loguru import logger

from daemon.config import ServerConfig
from daemon.events import BodyError, Event, Rejected, TooManyElements, normalize, parse_body
from daemon.journal import Journal, JournalUnavailable

JOURNAL = web.AppKey("journal", Journal)
TOKEN = web.AppKey("webhook_token", bytes)
SERVER = web.AppKey("server", ServerConfig)

HEALTH_PROBE_TIMEOUT = 5.0
RETRY_AFTER_SECONDS = "5"
CAP_WARNING_INTERVAL = 60.0
REFUSAL_LINGER_SECONDS = 2.0
_REFUSAL_BODY = b'{"error": "too many connections, nothing was read: retry"}'
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: "
    + RETRY_AFTER_SECONDS.encode()
    + b"\r\nConnection: close\r\nContent-Length: "
    + str(len(_REFUSAL_BODY)).encode()
    + b"\r\n\r\n"
    + _REFUSAL_BODY
)
NORMALIZE_SLICE = 100  # elements normalized between two turns of the event loop: no request hogs it
REASONS_LOGGED = 3


def create_webhook_app(server: ServerConfig, journal: Journal) -> web.Application:
    """Build the aiohttp app that answers SendPulse and health checks."""
    app = web.Application(client_max_size=server.max_body_bytes)
    app[JOURNAL] = journal
    app[TOKEN] = server.webhook_token.get_secret_value().encode()
    app[SERVER] = server
    app.router.add_post(server.webhook_path, handle_webhook)
    app.router.add_get("/healthz", handle_healthz)
    return app


class GuardedRunner(web.AppRunner):
    """The public listener's runner: a connection that has not sent its request line and headers
    within [server] read_timeout_s is closed (aiohttp's keep-alive timer runs from the connection's
    start), and past [server] max_connections a new connection is answered 503 and closed, so slow or
    idle clients cannot use up the process's file descriptors."""

    def __init__(self, app: web.Application, server: ServerConfig, **kwargs: Any):
        super().__init__(app, keepalive_timeout=server.read_timeout_s, **kwargs)
        self._max_connections = server.max_connections

    async def _make_server(self) -> Any:
        return _CappedServer(await super()._make_server(), self._max_connections)


class _CappedServer:
    """aiohttp's Server (the protocol factory) with a cap on open connections, counted from the moment
    a connection is accepted (a burst of connects is accepted before any of them is set up)."""

    def __init__(self, server: web.Server, limit: int):
        self._server = server
        self._limit = limit
        self.open = 0
        self.refused = 0
        self._last_warning = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open < self._limit:
            self.open += 1
            return _Counted(self._server(), self)
        self.refused += 1
        now = time.monotonic()
        if now - self._last_warning >= CAP_WARNING_INTERVAL:
            self._last_warning = now
            logger.warning(
                "{} connections are open ([server] max_connections): new ones are answered 503 "
                "until some close ({} refused so far)",
                self._limit,
                self.refused,
            )
        return _Refusal()


class _Counted(asyncio.Protocol):
    """aiohttp's request handler, counted until its connection ends."""

    __slots__ = ("_handler", "_server")

    def __init__(self, handler: asyncio.Protocol, server: _CappedServer):
        self._handler = handler
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.open -= 1
        self._handler.connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """Answer 503 and close, reading (and dropping) what the client sends meanwhile: closing with unread
    data would reset the connection, and the client would see a reset, not the answer."""

    _closer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(TOO_MANY_CONNECTIONS)
        if transport.can_write_eof():
            transport.write_eof()
        self._closer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closer is not None:
            self._closer.cancel()


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _authorized(request: web.Request) -> bool:
    expected = request.app[TOKEN]
    offered = request.query.get("token") or request.headers.get("X-Webhook-Token") or ""
    return hmac.compare_digest(header_bytes(offered), expected)


def header_bytes(value: str) -> bytes:
    """A header or query value as bytes to compare (aiohttp keeps a byte that is not UTF-8 as a lone
    surrogate, which a plain .encode() refuses)."""
    return value.encode("utf-8", "surrogatepass")


class Unreadable(Exception):
    """The request's body cannot be read: the answer is ready."""

    def __init__(self, response: web.Response):
        self.response = response


async def read_body(request: web.Request) -> bytes:
    """The body within [server] max_body_bytes and read_timeout_s; Unreadable(413/408/400) otherwise."""
    server = request.app[SERVER]
    limit = server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Unreadable(_error(413, f"body is {request.content_length} bytes, over the {limit}-byte limit"))
    try:
        if request.content.is_eof():  # the whole body came with the headers: nothing to wait for, no timer
            return await request.read()
        async with asyncio.timeout(server.read_timeout_s):  # no task of its own, unlike wait_for
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Unreadable(_error(413, f"body is over the {limit}-byte limit")) from None
    except TimeoutError:
        raise Unreadable(
            _error(408, f"body did not arrive within {server.read_timeout_s:g} s", Connection="close")
        ) from None
    except web_protocol.RequestPayloadError as exc:  # a broken Content-Encoding or chunked framing
        raise Unreadable(_error(400, f"body cannot be read: {str(exc).splitlines()[-1].strip()}")) from None


async def handle_webhook(request: web.Request) -> web.Response:
    """Journal every element of the body; answer only once the commit is durable."""
    if not _authorized(request):
        logger.warning("webhook from {} refused: missing or wrong token", request.remote)
        return _error(401, "missing or wrong webhook token")
    server = request.app[SERVER]
    try:
        body = await read_body(request)
    except Unreadable as unreadable:
        logger.warning("webhook from {} refused: {}", request.remote, unreadable.response.text)
        return unreadable.response
    try:
        elements = parse_body(body, server.max_elements_per_request)
    except TooManyElements as exc:
        logger.warning("webhook from {} refused: {}", request.remote, exc)
        return _error(413, f"{exc}: send at most {server.max_elements_per_request} per request")
    except BodyError as exc:
        logger.warning("webhook from {} refused: {}", request.remote, exc)
        return _error(400, str(exc))

    received_at = datetime.now(UTC)
    events: list[Event] = []
    rejected: list[Rejected] = []
    for position, element in enumerate(elements):
        if position and not position % NORMALIZE_SLICE:
            await asyncio.sleep(0)
        item = normalize(element.value, received_at, element.raw, element.wide_numbers)
        if isinstance(item, Rejected):
            rejected.append(item)
        else:
            events.append(item)
    try:
        result = await request.app[JOURNAL].append(events, rejected)
    except JournalUnavailable as exc:
        return _error(503, f"journal cannot write, nothing was accepted: {exc}", **{"Retry-After": RETRY_AFTER_SECONDS})
    if result.rejected:
        # one line per request, however many elements: a flood of bad elements is not a flood of logs
        logger.warning(
            "webhook from {}: {} accepted, {} duplicates, {} quarantined ({})",
            request.remote,
            result.accepted,
            result.duplicates,
            result.rejected,
            _first_reasons(rejected),
        )
    else:
        logger.debug("webhook: {} accepted, {} duplicates", result.accepted, result.duplicates)
    return web.Response(
        body=_answer(result.accepted, result.duplicates, result.rejected),
        content_type="application/json",
        charset="utf-8",
    )


@lru_cache(maxsize=256)  # nearly every answer is one of a few: each encoded once (3.6 -> 1.4 µs a response)
def _answer(accepted: int, duplicates: int, rejected: int) -> bytes:
    return json.dumps({"accepted": accepted, "duplicates": duplicates, "rejected": rejected}).encode()


def _first_reasons(rejected: list[Rejected]) -> str:
    reasons = list(dict.fromkeys(item.reason for item in rejected))
    more = f"; and {len(reasons) - REASONS_LOGGED} other reasons" if len(reasons) > REASONS_LOGGED else ""
    return "; ".join(reasons[:REASONS_LOGGED]) + more


async def handle_healthz(request: web.Request) -> web.Response:
    """200 when a durable write to the journal succeeds now, 503 otherwise."""
    journal = request.app[JOURNAL]
    try:
        await asyncio.wait_for(journal.probe(), HEALTH_PROBE_TIMEOUT)
    except JournalUnavailable as exc:
        return web.json_response({"journal": "unavailable", "error": str(exc)}, status=503)
    except TimeoutError:
        return web.json_response({"journal": "unavailable", "error": "write probe timed out"}, status=503)
    return web.json_response({"journal": "writable"})
