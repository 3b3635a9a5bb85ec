"""A client of SendPulse's WhatsApp REST API, as reconciliation reads it: bots, chats, a contact's messages.

OAuth client credentials (the token cached, fetched again shortly before it expires and once on a
401), every request (the token's too) through one RequestBudget, 429s and 5xx answered by backing off.
The client secret never appears in an error, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from daemon.ratelimit import RequestBudget

PAGE_SIZE = 100  # the API's largest page
TOKEN_MARGIN_S = 60.0  # a token is renewed this long before it expires (a tenth of its life when shorter)
RETRIES = 4  # a 5xx, a timeout or a dropped connection is tried again this many times
RATE_LIMIT_RETRIES = 8  # 429s in a row before the run gives up (another client spends the account's budget)
BACKOFF_S = 0.5  # doubled at each retry
BACKOFF_MAX_S = 30.0
TIMEOUT_S = 30.0


class SendPulseError(Exception):
    """SendPulse could not be read; the message says why, never with the secret."""


class SendPulseUnavailable(SendPulseError):
    """Down, too slow, or refusing with 429 / 5xx past the retries: waiting can fix it."""


class SendPulseMisconfigured(SendPulseError):
    """The credentials are refused (or lack access): an operator must act."""


class SendPulseNotFound(SendPulseError):
    """An unknown bot or contact (a contact deleted since, say)."""


def parse_time(value: Any) -> datetime | None:
    """The API's ISO 8601 `created_at` / `last_activity_at` as UTC; None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


class SendPulseClient:
    """One account's API; `async with` or `close()` ends its HTTP session."""

    def __init__(
        self,
        api_url: str,
        client_id: str,
        client_secret: str,
        budget: RequestBudget,
        *,
        timeout: float = TIMEOUT_S,
        retries: int = RETRIES,
        backoff: float = BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.api_url = api_url.rstrip("/")
        self._client_id = client_id
        self._secret = client_secret
        self.budget = budget
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._backoff = backoff
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()
        self.requests = 0  # sent, the token's included

    def __repr__(self) -> str:
        return f"SendPulseClient({self.api_url!r}, client_id={self._client_id!r})"

    async def __aenter__(self) -> SendPulseClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the API ---------------------------------------------------------------------------------

    async def bots(self) -> list[dict[str, Any]]:
        """The account's WhatsApp bots."""
        return _list(await self._get("/whatsapp/bots", {}), "/whatsapp/bots")

    async def chats(self, bot_id: str, since: datetime | None = None) -> AsyncIterator[dict[str, Any]]:
        """The bot's chats whose contact was active at or after `since` (every chat when None)."""
        skip = 0
        while True:
            page = _list(
                await self._get("/whatsapp/chats", {"bot_id": bot_id, "size": PAGE_SIZE, "skip": skip}),
                "/whatsapp/chats",
            )
            for chat in page:
                contact = chat.get("contact") if isinstance(chat, dict) else None
                if not isinstance(contact, dict) or not contact.get("id"):
                    continue
                active = parse_time(contact.get("last_activity_at"))
                # the order of chats is undocumented: every page is read, none is taken as the last by date
                if since is None or active is None or active >= since:
                    yield chat
            if len(page) < PAGE_SIZE:
                return
            skip += len(page)

    async def messages_since(self, contact_id: str, since: datetime) -> list[dict[str, Any]]:
        """The contact's messages created at or after `since`, oldest first.

        Walked newest first with search_after until a message older than `since`: the API has no date
        filter, so walking forward would read the contact's whole history to reach the window."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"contact_id": contact_id, "size": PAGE_SIZE, "order": "desc"}
            if after:
                params["search_after"] = after
            page = _list(await self._get("/whatsapp/chats/messages", params), "/whatsapp/chats/messages")
            for message in page:
                created = parse_time(message.get("created_at")) if isinstance(message, dict) else None
                if created is not None and created < since:
                    found.reverse()
                    return found
                if isinstance(message, dict):
                    found.append(message)
            if len(page) < PAGE_SIZE:
                found.reverse()
                return found
            last = page[-1]
            after = str(last.get("id")) if isinstance(last, dict) and last.get("id") else None
            if after is None:
                raise SendPulseError(
                    "GET /whatsapp/chats/messages: a full page whose last message has no id (cannot page on)"
                )

    async def contact(self, contact_id: str) -> dict[str, Any]:
        data = await self._get("/whatsapp/contacts/get", {"id": contact_id})
        if not isinstance(data, dict):
            raise SendPulseError("GET /whatsapp/contacts/get: data is not an object")
        return data

    # -- requests --------------------------------------------------------------------------------

    async def _get(self, path: str, params: dict[str, Any]) -> Any:
        renewed = False
        while True:
            token = await self._access_token()
            status, body = await self._send("GET", path, params=params, headers={"Authorization": f"Bearer {token}"})
            if status == 401 and not renewed:
                self._forget_token(token)
                renewed = True
                continue
            return _data(path, status, body)

    def _forget_token(self, token: str) -> None:
        if self._token == token:
            self._token, self._token_expires = None, 0.0

    async def _access_token(self) -> str:
        async with self._token_lock:
            if self._token is not None and self._clock() < self._token_expires:
                return self._token
            status, body = await self._send(
                "POST",
                "/oauth/access_token",
                json_body={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._secret,
                },
            )
            if status in (400, 401, 403):
                raise SendPulseMisconfigured(
                    f"SendPulse refused the credentials of [sendpulse] client_id {self._client_id!r} "
                    f"({status}: {_reason(body)}); check client_id and client_secret (Settings > API)"
                )
            if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
                raise SendPulseError(f"POST /oauth/access_token: unexpected answer {status}: {_reason(body)}")
            try:
                lifetime = float(body.get("expires_in", 3600))
            except (TypeError, ValueError):
                lifetime = 3600.0
            self._token = body["access_token"]
            self._token_expires = self._clock() + lifetime - min(TOKEN_MARGIN_S, lifetime / 10)
            return self._token

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> tuple[int, Any]:
        """One call, retried through 429s, 5xx, timeouts and dropped connections; (status, JSON body)."""
        failures = limited = 0
        while True:
            try:
                async with self.budget.request():
                    self.requests += 1
                    async with self._http().request(
                        method, self.api_url + path, params=params, headers=headers, json=json_body
                    ) as answer:
                        status, text = answer.status, await answer.text()
                        retry_after = answer.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failures += 1
                if failures > self._retries:
                    raise SendPulseUnavailable(f"{method} {path}: {_describe(exc)} ({failures} attempts)") from None
                await asyncio.sleep(self._delay(failures))
                continue
            if status == 429:
                limited += 1
                self.budget.note_429()
                if limited > RATE_LIMIT_RETRIES:
                    raise SendPulseUnavailable(f"{method} {path}: 429 Too Many Requests {limited} times in a row")
                wait = _seconds(retry_after) or self._delay(limited)
                self.budget.pause(wait, "SendPulse answered 429")
                continue
            if status >= 500:
                failures += 1
                if failures > self._retries:
                    raise SendPulseUnavailable(f"{method} {path}: {status} ({failures} attempts)")
                await asyncio.sleep(self._delay(failures))
                continue
            try:
                return status, json.loads(text) if text else None
            except ValueError:
                return status, text[:200]

    def _delay(self, attempt: int) -> float:
        return min(BACKOFF_MAX_S, self._backoff * 2.0 ** (attempt - 1))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers={"Accept": "application/json"})
        return self._session


def _data(path: str, status: int, body: Any) -> Any:
    if status == 401:
        raise SendPulseMisconfigured(f"GET {path}: 401 with a fresh token ({_reason(body)})")
    if status == 403:
        raise SendPulseMisconfigured(f"GET {path}: 403, the credentials lack access ({_reason(body)})")
    if status == 404:
        raise SendPulseNotFound(f"GET {path}: 404 ({_reason(body)})")
    if status != 200:
        raise SendPulseError(f"GET {path}: {status} ({_reason(body)})")
    if not isinstance(body, dict) or body.get("success") is False or "data" not in body:
        raise SendPulseError(f"GET {path}: an answer without data ({_reason(body)})")
    return body["data"]


def _list(data: Any, path: str) -> list[Any]:
    if not isinstance(data, list):
        raise SendPulseError(f"GET {path}: data is not a list")
    return data


def _reason(body: Any) -> str:
    if isinstance(body, dict):
        parts = list(
            dict.fromkeys(str(body[key]) for key in ("error", "message", "error_description") if body.get(key))
        )
        if body.get("errors"):
            parts.append(json.dumps(body["errors"], ensure_ascii=False)[:200])
        return "; ".join(parts) or "no reason given"
    return str(body)[:200] if body else "no reason given"


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return min(BACKOFF_MAX_S, seconds) if seconds is not None and seconds > 0 else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
