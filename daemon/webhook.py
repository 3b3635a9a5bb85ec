"""The public HTTP side: the SendPulse webhook and /healthz."""

from __future__ import annotations

import asyncio
import hmac
from datetime import datetime, timezone

from aiohttp import web
from loguru import logger

from daemon.config import ServerConfig
from daemon.events import BodyError, Event, Rejected, normalize, parse_body
from daemon.journal import Journal, JournalUnavailable

JOURNAL = web.AppKey("journal", Journal)
TOKEN = web.AppKey("webhook_token", bytes)
MAX_BODY = web.AppKey("max_body_bytes", int)

HEALTH_PROBE_TIMEOUT = 5.0
RETRY_AFTER_SECONDS = "5"


def create_webhook_app(server: ServerConfig, journal: Journal) -> web.Application:
    """Build the aiohttp app that answers SendPulse and health checks."""
    app = web.Application(client_max_size=server.max_body_bytes)
    app[JOURNAL] = journal
    app[TOKEN] = server.webhook_token.get_secret_value().encode()
    app[MAX_BODY] = server.max_body_bytes
    app.router.add_post(server.webhook_path, handle_webhook)
    app.router.add_get("/healthz", handle_healthz)
    return app


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _authorized(request: web.Request) -> bool:
    expected = request.app[TOKEN]
    offered = request.query.get("token") or request.headers.get("X-Webhook-Token") or ""
    return hmac.compare_digest(offered.encode(), expected)


async def handle_webhook(request: web.Request) -> web.Response:
    """Journal every element of the body; answer only once the commit is durable."""
    if not _authorized(request):
        logger.warning("webhook from {} refused: missing or wrong token", request.remote)
        return _error(401, "missing or wrong webhook token")
    limit = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        return _error(413, f"body is {request.content_length} bytes, over the {limit}-byte limit")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body is over the {limit}-byte limit")
    try:
        elements = parse_body(body)
    except BodyError as exc:
        logger.warning("webhook body refused: {}", exc)
        return _error(400, str(exc))

    received_at = datetime.now(timezone.utc)
    events: list[Event] = []
    rejected: list[Rejected] = []
    for position, element in enumerate(elements):
        item = normalize(element.value, received_at, element.raw)
        if isinstance(item, Rejected):
            logger.warning("webhook element {} quarantined: {}", position, item.reason)
            rejected.append(item)
        else:
            events.append(item)
    try:
        result = await request.app[JOURNAL].append(events, rejected)
    except JournalUnavailable as exc:
        return _error(503, f"journal cannot write, nothing was accepted: {exc}",
                      **{"Retry-After": RETRY_AFTER_SECONDS})
    logger.debug("webhook: {} accepted, {} duplicates, {} rejected",
                 result.accepted, result.duplicates, result.rejected)
    return web.json_response(
        {"accepted": result.accepted, "duplicates": result.duplicates, "rejected": result.rejected}
    )


async def handle_healthz(request: web.Request) -> web.Response:
    """200 when a durable write to the journal succeeds now, 503 otherwise."""
    journal = request.app[JOURNAL]
    try:
        await asyncio.wait_for(journal.probe(), HEALTH_PROBE_TIMEOUT)
    except JournalUnavailable as exc:
        return web.json_response({"journal": "unavailable", "error": str(exc)}, status=503)
    except asyncio.TimeoutError:
        return web.json_response({"journal": "unavailable", "error": "write probe timed out"}, status=503)
    return web.json_response({"journal": "writable"})
