"""The request budget of one Airtable base: at most N requests in any second, never one more.

Airtable allows 5 requests per second per base and locks the base out for 30 s after one more. The
server counts requests when they arrive, and arrival lies somewhere between the moment we send and
the moment the answer comes back. So a token is taken when a request is sent and comes back to the
bucket `per` seconds after that request *ended*: whatever the network latency, any two requests
that use the same token arrive at least `per` seconds apart, and no window of `per` seconds can ever
hold more than `rate` arrivals. On a low-latency link this reaches the ceiling; on a slow one it
stays under it, which is the side to err on.

Every request to the base goes through `RequestBudget.request()`: writes, reads and metadata calls.
`pause()` empties the bucket until a moment (after a 429 anyway, or on a quota error).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.snapshot import SinkStats

WINDOW_STATS = 60.0  # "requests in the last minute"
RECOVERY_STEP = 10.0  # after a 429, the rate climbs back one request per window this often
MONTHLY_LIMIT_REASON = "[airtable] monthly_request_limit reached"


class BudgetPaused(Exception):
    """The budget is paused with refuse=True: the request is not sent, rather than held for the pause."""

    def __init__(self, reason: str, retry_after: float):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class RequestBudget:
    def __init__(
        self,
        rate: float = 5,
        per: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        start_empty: bool = False,
        monthly: MonthlyRequests | None = None,
    ):
        if rate < 1:
            raise ValueError("rate must allow at least one request per window")
        self.configured = self.capacity = int(rate)
        self._last_429 = float("-inf")
        self.per = per
        self._clock = clock
        self._in_flight = 0
        self._returns: deque[float] = deque()  # when each used token comes back, ascending
        if start_empty:
            # Another process (the command just before, a daemon just stopped) may have spent this
            # second's requests: a new budget's first tokens arrive one window after it starts.
            self._returns.extend([clock() + per] * self.capacity)
        self._changed = asyncio.Event()
        self._turn = asyncio.Lock()  # waiters are served in order
        self._refusing = False
        self.paused_until = 0.0
        self.pause_reason: str | None = None
        self._sent: deque[float] = deque()
        self.requests_total = 0
        self.rejected_429 = 0
        self.monthly = monthly

    # -- state -----------------------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        while self._returns and self._returns[0] <= now:
            self._returns.popleft()

    @property
    def tokens_left(self) -> int:
        now = self._clock()
        if now < self.paused_until:
            return 0
        self._refill(now)
        return max(0, self.capacity - self._in_flight - len(self._returns))

    @property
    def requests_last_minute(self) -> int:
        horizon = self._clock() - WINDOW_STATS
        while self._sent and self._sent[0] < horizon:
            self._sent.popleft()
        return len(self._sent)

    def stats(self) -> SinkStats:
        """The budget's figures in a sink's status entry, with the month's when it counts them."""
        now = self._clock()
        paused = self.paused_until > now
        stats: SinkStats = {
            "requests_last_minute": self.requests_last_minute,
            "requests_total": self.requests_total,
            "rate_limited_429": self.rejected_429,
            "tokens_left": self.tokens_left,
            "requests_per_window": self.capacity,
            "paused_until": _wall(self.paused_until, now) if paused else None,
            "paused_for_s": round(self.paused_until - now, 1) if paused else None,
            "pause_reason": self.pause_reason if paused else None,
        }
        if self.monthly is not None:
            stats.update(self.monthly.stats())
        return stats

    # -- control ---------------------------------------------------------------------------------

    def pause(self, seconds: float, reason: str, *, refuse: bool = False) -> None:
        """No request leaves before `seconds` from now (a longer pause already set is kept).

        refuse: while this pause lasts, requests (those already waiting too) raise BudgetPaused
        instead of waiting it out (an hour-long quota pause should not hold a delivery for an hour)."""
        until = self._clock() + seconds
        if until >= self.paused_until:
            self.paused_until = until
            self.pause_reason = reason
            self._refusing = refuse
        self._changed.set()

    def resume(self) -> None:
        """Lift a pause at once (an operator asked for a retry)."""
        self.paused_until = 0.0
        self._changed.set()

    def set_rate(self, rate: float) -> None:
        """A new [airtable] requests_per_second (SIGHUP); tokens in use come back as they would have."""
        if rate < 1:
            raise ValueError("rate must allow at least one request per window")
        self.configured = self.capacity = int(rate)
        self._changed.set()

    def note_429(self) -> None:
        """The server refused a request anyway: our rate is too high for it (a wrong setting, another
        client on the base). Halve it, so that progress resumes; it climbs back one step per quiet
        RECOVERY_STEP seconds, up to the configured rate."""
        self.rejected_429 += 1
        now = self._clock()
        if now - self._last_429 >= self.per:  # a volley of 429s from one burst halves it once
            self.capacity = max(1, self.capacity // 2)
        self._last_429 = now

    def _recover(self, now: float) -> None:
        if self.capacity < self.configured and now - self._last_429 >= RECOVERY_STEP:
            self.capacity += 1
            self._last_429 = now

    @asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """Hold one token for the duration of a request, and `per` seconds after it ends."""
        await self._acquire()
        try:
            yield
        finally:
            self._in_flight -= 1
            self._returns.append(self._clock() + self.per)
            self._changed.set()

    async def _acquire(self) -> None:
        async with self._turn:
            while True:
                now = self._clock()
                if now < self.paused_until and self._refusing:
                    raise BudgetPaused(self.pause_reason or "paused", self.paused_until - now)
                month_left = self.monthly.reached() if self.monthly else None
                if month_left is not None:
                    raise BudgetPaused(MONTHLY_LIMIT_REASON, month_left)
                if now < self.paused_until:
                    await self._wait(self.paused_until - now)
                    continue
                self._refill(now)
                self._recover(now)
                if self._in_flight + len(self._returns) < self.capacity:
                    break
                # full: the next token comes back when the oldest return is due, or when a request ends
                await self._wait(self._returns[0] - now if self._returns else None)
            self._in_flight += 1
            self.requests_total += 1
            self._sent.append(now)
            if self.monthly:
                self.monthly.note()

    async def _wait(self, timeout: float | None) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass


def _wall(moment: float, now: float) -> str:
    return datetime.fromtimestamp(time.time() + (moment - now), UTC).isoformat(timespec="seconds")


MONTH_WARNING_SHARE = 0.8  # status and an alert say so from here


def month_of(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m")


def _month_bounds(month: str) -> tuple[float, float]:
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.timestamp(), end.timestamp()


class MonthlyRequests:
    """Requests sent to the base in the current calendar month (UTC), against an optional limit (a
    plan's monthly API calls). Restored from and saved to the journal by the daemon, so a restart
    does not reset it."""

    def __init__(self, limit: int, month: str | None = None, count: int = 0, *, wall: Callable[[], float] = time.time):
        self.limit = limit
        self._wall = wall
        self.month = month_of(wall())
        self.count = count if month == self.month else 0  # a count from an earlier month starts over
        self.allowed_past_limit: str | None = None  # the month an operator's `sync` lifted the limit for
        self.dirty = False

    def _roll(self) -> None:
        month = month_of(self._wall())
        if month != self.month:
            self.month, self.count, self.dirty = month, 0, True

    def note(self) -> None:
        self._roll()
        self.count += 1
        self.dirty = True

    def reached(self) -> float | None:
        """Seconds until the month turns when the limit is reached (and not lifted), else None."""
        self._roll()
        if not self.limit or self.count < self.limit or self.allowed_past_limit == self.month:
            return None
        return max(1.0, _month_bounds(self.month)[1] - self._wall())

    def lift(self) -> None:
        """The operator asked for delivery anyway (`sync`): no limit until the month turns."""
        self._roll()
        if self.limit and self.count >= self.limit:
            self.allowed_past_limit = self.month
            self.dirty = True  # kept in the journal: a restart does not hold the base again this month

    def forecast(self) -> int:
        """This month's requests at the pace so far."""
        start, end = _month_bounds(self.month)
        elapsed = max(3600.0, self._wall() - start)  # the first hour says too little to extrapolate
        return round(self.count * (end - start) / elapsed)

    def stats(self) -> SinkStats:
        self._roll()
        return {
            "requests_this_month": self.count,
            "monthly_request_limit": self.limit or None,
            "requests_month_forecast": self.forecast(),
            "month": self.month,
        }

    # kept in the journal's meta table as {"month": "YYYY-MM", "count": N, "lifted": "YYYY-MM" | null}
    JOURNAL_KEY = "airtable_requests_month"

    def dumps(self) -> str:
        self.dirty = False
        return json.dumps({"month": self.month, "count": self.count, "lifted": self.allowed_past_limit})

    @classmethod
    def restore(cls, limit: int, saved: str | None, *, wall: Callable[[], float] = time.time) -> MonthlyRequests:
        try:
            data = json.loads(saved) if saved else {}
            monthly = cls(limit, str(data.get("month")), int(data.get("count", 0)), wall=wall)
            if data.get("lifted") == monthly.month:
                monthly.allowed_past_limit = monthly.month
            return monthly
        except (ValueError, TypeError, AttributeError):  # an unreadable record counts from zero
            return cls(limit, wall=wall)
