"""The delivery loop with an in-memory sink of our own: retries, poison isolation, wake, stop."""

import asyncio
from collections import Counter
from datetime import datetime, timezone

import pytest

from daemon import delivery
from daemon.delivery import DeliveryWorker
from daemon.events import normalize
from daemon.journal import Journal
from daemon.sinks.base import PermanentError, SetupError, TransientError
from tests.support import until

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
FAIL_BOUND = 30.0  # a failure bound only: the tests wait for states


class FakeSink:
    name = "postgres"
    batch_size = 8

    def __init__(self, failures=(), poison=()):
        self.failures = list(failures)  # exceptions raised by the next deliveries, in order
        self.poison = set(poison)  # message ids refused for good
        self.accepted = Counter()
        self.calls = 0
        self.check_error = None

    async def deliver(self, events):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        bad = [e.message_id for e in events if e.message_id in self.poison]
        if bad:
            raise PermanentError(f"value out of range in {bad[0]}")
        self.accepted.update(e.message_id for e in events)

    async def check(self):
        if self.check_error:
            raise self.check_error

    async def close(self):
        pass


def message(i):
    return {"title": "incoming_message", "contact": {"id": "c1"},
            "info": {"message": {"id": f"m{i}", "channel_data": {"message": {"text": {"body": "x"}}}}}}


@pytest.fixture
async def journal(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    yield journal
    await journal.close()


async def sink_counts(journal):
    return (await journal.counts())["sinks"]["postgres"]


async def test_transient_failures_are_retried_and_nothing_is_delivered_twice(journal):
    sink = FakeSink(failures=[TransientError("connection refused"), TransientError("timeout")])
    worker = DeliveryWorker(journal, sink)
    task = asyncio.create_task(worker.run())
    await journal.append([normalize(message(i), RECEIVED) for i in range(20)])
    await until(lambda: _delivered(journal, 20), task, timeout=FAIL_BOUND)
    assert sink.accepted == Counter({f"m{i}": 1 for i in range(20)})
    status = worker.live_status()
    assert status["state"] == "up" and status["consecutive_failures"] == 0
    assert status["last_error"] == "timeout" and status["last_delivery_at"]
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def _delivered(journal, n):
    return (await sink_counts(journal)).get("delivered", 0) == n


async def test_a_poison_event_alone_becomes_a_dead_letter(journal):
    sink = FakeSink(poison={"m5"})
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(16)])
    task = asyncio.create_task(worker.run())
    await until(lambda: _delivered(journal, 15), task, timeout=FAIL_BOUND)
    counts = await sink_counts(journal)
    assert counts.get("dead") == 1 and counts.get("pending", 0) == 0
    [dead] = await journal.dead_letters("postgres", 10)
    assert "m5" in str(dead)
    assert sink.accepted == Counter({f"m{i}": 1 for i in range(16) if i != 5})
    sink.poison.clear()  # the operator fixed the cause
    assert await journal.requeue_dead("postgres") == 1
    worker.wake()
    await until(lambda: _delivered(journal, 16), task, timeout=FAIL_BOUND)
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_wake_skips_the_backoff_and_stop_ends_a_pause(journal, monkeypatch):
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures: 3600.0)
    sink = FakeSink(failures=[TransientError("server closed the connection")])
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(1), RECEIVED)])
    task = asyncio.create_task(worker.run())

    async def paused():
        return worker.live_status().get("retry_in_s", 0) > 3000
    await until(paused, task, timeout=FAIL_BOUND)
    assert worker.state == "down" and (await sink_counts(journal))["pending"] == 1
    worker.wake()  # `chatledger sync` / SIGHUP
    await until(lambda: _delivered(journal, 1), task, timeout=FAIL_BOUND)
    assert worker.state == "up"

    sink.failures = [TransientError("down again")]
    await journal.append([normalize(message(2), RECEIVED)])
    await until(paused, task, timeout=FAIL_BOUND)
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)  # does not sit out the hour
    assert (await sink_counts(journal))["pending"] == 1


async def test_an_idle_worker_reports_a_misconfigured_sink(journal, monkeypatch):
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures: 3600.0)
    sink = FakeSink()
    sink.check_error = SetupError("password authentication failed")
    worker = DeliveryWorker(journal, sink)
    task = asyncio.create_task(worker.run())

    async def misconfigured():
        return worker.state == "misconfigured"
    await until(misconfigured, task, timeout=FAIL_BOUND)
    assert worker.live_status()["last_error"] == "password authentication failed"
    sink.check_error = None
    worker.wake()

    async def up():
        return worker.state == "up"
    await until(up, task, timeout=FAIL_BOUND)
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)
