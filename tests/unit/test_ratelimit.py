"""The per-base request budget: no window of `per` seconds ever holds more than `rate` arrivals."""

import asyncio
import random
import time
from datetime import UTC

import pytest

from daemon.ratelimit import RequestBudget


def most_in_any_window(intervals, per):
    """The most requests that could arrive within one window of `per` s, whatever the latency.

    A request arrives somewhere in [start, end]; the worst window starts at some request's end."""
    worst = 0
    for t in sorted({end for _, end in intervals} | {start for start, _ in intervals}):
        worst = max(worst, sum(1 for start, end in intervals if start < t + per and end >= t))
    return worst


@pytest.mark.parametrize("concurrency", [1, 3, 12])
async def test_never_more_than_rate_per_window_whatever_the_latency(concurrency):
    budget = RequestBudget(rate=5, per=0.1)
    rng = random.Random(concurrency)
    intervals = []

    async def one():
        async with budget.request():
            start = time.monotonic()
            await asyncio.sleep(rng.uniform(0, 0.02))  # latency
            intervals.append((start, time.monotonic()))

    queue = list(range(60))

    async def sender():
        while queue:
            queue.pop()
            await one()

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    assert len(intervals) == 60 and budget.requests_total == 60
    assert most_in_any_window(intervals, 0.1) <= 5
    if concurrency >= 5:  # it also reaches the ceiling: some window holds the full 5
        assert most_in_any_window(intervals, 0.1) == 5


async def test_pause_holds_every_request_until_it_ends():
    budget = RequestBudget(rate=5, per=0.05)
    budget.pause(0.2, "429 RATE_LIMIT_REACHED")
    paused_at = time.monotonic()
    assert budget.tokens_left == 0 and budget.stats()["pause_reason"] == "429 RATE_LIMIT_REACHED"
    async with budget.request():
        assert time.monotonic() - paused_at >= 0.2
    budget.pause(30, "quota")
    budget.resume()
    async with budget.request():
        pass
    assert budget.stats()["paused_until"] is None


async def test_tokens_left_and_stats_follow_a_clock():
    now = [1000.0]
    budget = RequestBudget(rate=5, per=1.0, clock=lambda: now[0])
    assert budget.tokens_left == 5
    for _ in range(5):
        async with budget.request():
            pass
    assert budget.tokens_left == 0
    now[0] += 0.999
    assert budget.tokens_left == 0
    now[0] += 0.002
    assert budget.tokens_left == 5
    assert budget.requests_last_minute == 5
    now[0] += 61
    assert budget.requests_last_minute == 0 and budget.requests_total == 5
    budget.note_429()
    assert budget.stats()["rate_limited_429"] == 1


def test_a_rate_below_one_is_refused():
    with pytest.raises(ValueError):
        RequestBudget(rate=0.5)


async def test_a_429_halves_the_rate_and_quiet_time_restores_it():
    now = [0.0]
    budget = RequestBudget(rate=8, per=1.0, clock=lambda: now[0])
    budget.note_429()
    budget.note_429()  # the same volley
    assert budget.capacity == 4
    for _ in range(3):
        now[0] += 1.0
        budget.note_429()
    assert budget.capacity == 1  # never below one
    now[0] += 1.0
    budget.note_429()
    assert budget.capacity == 1
    for step in range(1, 8):
        now[0] += 10.0
        async with budget.request():
            pass
        assert budget.capacity == 1 + step
    now[0] += 100.0
    async with budget.request():
        pass
    assert budget.capacity == 8  # the configured rate is the ceiling


async def test_refusing_waiters_ends_their_wait_at_once():
    from daemon.ratelimit import BudgetPaused

    budget = RequestBudget(rate=1, per=3600)
    async with budget.request():
        pass  # the only token is out for an hour
    waiter = asyncio.create_task(budget.request().__aenter__())
    await asyncio.sleep(0)
    budget.pause(3600, "quota", refuse=True)
    with pytest.raises(BudgetPaused):
        await asyncio.wait_for(waiter, 10)
    with pytest.raises(BudgetPaused) as refused:  # and a request that comes later is not held either
        await asyncio.wait_for(budget.request().__aenter__(), 10)
    assert refused.value.reason == "quota" and refused.value.retry_after > 3500


async def test_a_new_budget_can_start_empty():
    now = [50.0]
    budget = RequestBudget(rate=5, per=1.0, clock=lambda: now[0], start_empty=True)
    assert budget.tokens_left == 0  # the previous process may have spent this second
    now[0] += 1.0
    assert budget.tokens_left == 5


class Wall:
    """A wall clock the test sets (UTC seconds)."""

    def __init__(self, text):
        self.now = self.at(text)

    @staticmethod
    def at(text):
        from datetime import datetime

        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()

    def __call__(self):
        return self.now


def test_monthly_requests_count_and_start_over_when_the_month_turns():
    from daemon.ratelimit import MonthlyRequests

    wall = Wall("2026-12-31T23:59:00")
    monthly = MonthlyRequests(0, "2026-12", 41, wall=wall)  # restored from the journal: same month, kept
    monthly.note()
    assert (monthly.count, monthly.dirty) == (42, True)
    wall.now = Wall.at("2027-01-01T00:00:01")
    assert monthly.stats()["requests_this_month"] == 0 and monthly.month == "2027-01"
    assert MonthlyRequests(0, "2026-11", 900, wall=wall).count == 0  # an earlier month's count is not this one's


def test_the_forecast_extrapolates_the_pace_so_far():
    from daemon.ratelimit import MonthlyRequests

    wall = Wall("2026-11-11T00:00:00")  # a third of November's 30 days
    assert MonthlyRequests(1000, "2026-11", 200, wall=wall).forecast() == 600
    wall.now = Wall.at("2026-11-01T00:10:00")  # too early to say much: the first hour counts as an hour
    assert MonthlyRequests(1000, "2026-11", 2, wall=wall).forecast() == 2 * 720


async def test_at_the_monthly_limit_requests_are_refused_until_the_month_turns_or_it_is_lifted():
    from daemon.ratelimit import MONTHLY_LIMIT_REASON, BudgetPaused, MonthlyRequests

    wall = Wall("2026-11-30T23:00:00")
    budget = RequestBudget(rate=5, per=0.001, monthly=MonthlyRequests(3, "2026-11", 1, wall=wall))
    for _ in range(2):
        async with budget.request():
            pass
    with pytest.raises(BudgetPaused) as refused:
        async with budget.request():
            pass
    assert refused.value.reason == MONTHLY_LIMIT_REASON and refused.value.retry_after == 3600
    assert budget.stats()["requests_this_month"] == 3  # a refused request is not sent, not counted
    budget.monthly.lift()  # `chatledger sync`: deliver anyway, until the month turns
    async with budget.request():
        pass
    wall.now = Wall.at("2026-12-01T00:00:00")
    for _ in range(3):
        async with budget.request():
            pass
    with pytest.raises(BudgetPaused):  # December has its own limit again
        async with budget.request():
            pass


def test_a_lift_is_kept_in_the_journal_for_the_rest_of_its_month():
    from daemon.ratelimit import MonthlyRequests

    wall = Wall("2026-11-20T10:00:00")
    monthly = MonthlyRequests(3, "2026-11", 3, wall=wall)
    monthly.lift()
    assert monthly.dirty  # saved soon, not only at the next request
    restored = MonthlyRequests.restore(3, monthly.dumps(), wall=wall)  # a restart after `sync`
    assert restored.reached() is None and restored.count == 3
    wall.now = Wall.at("2026-12-01T00:00:00")
    december = MonthlyRequests.restore(3, MonthlyRequests(3, "2026-12", 3, wall=wall).dumps(), wall=wall)
    assert december.reached() is not None  # a lift from November does not carry over
    assert MonthlyRequests.restore(3, monthly.dumps(), wall=wall).reached() is None  # a new month: count 0
