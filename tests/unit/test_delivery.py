"""The delivery loop with the shipped in-memory sink (daemon.testing.fakes): retries, poison isolation, wake, stop."""

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest

from daemon import delivery
from daemon.delivery import DeliveryWorker
from daemon.events import normalize
from daemon.journal import Journal
from daemon.records import map_events
from daemon.sinks.airtable import AirtableSink
from daemon.sinks.base import RefusedError, SetupError, TransientError
from daemon.testing.fakes import MemorySink
from tests.support import until

RECEIVED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FAIL_BOUND = 30.0  # a failure bound only: the tests wait for states


def fake_sink(failures=(), refused=()):
    """A PostgreSQL-like sink: `failures` raised by the next deliveries, messages `refused` for their value."""
    sink = MemorySink("postgres", 8)
    sink.failures = list(failures)
    sink.refused = {key(message_id) for message_id in refused}
    return sink


def key(message_id):
    """The dedup key of message(i), whose message id is m<i>."""
    return f"msg:incoming_message:{message_id}"


def accepted(sink):
    """How often each message was delivered, by message id."""
    return Counter({dedup_key.rsplit(":", 1)[-1]: n for dedup_key, n in sink.accepted.items()})


def message(i):
    return {
        "title": "incoming_message",
        "contact": {"id": "c1"},
        "info": {"message": {"id": f"m{i}", "channel_data": {"message": {"text": {"body": "x"}}}}},
    }


@pytest.fixture
async def journal(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["postgres"])
    yield journal
    await journal.close()


async def sink_counts(journal):
    return (await journal.counts())["sinks"]["postgres"]


async def test_transient_failures_are_retried_and_nothing_is_delivered_twice(journal):
    sink = fake_sink(failures=[TransientError("connection refused"), TransientError("timeout")])
    worker = DeliveryWorker(journal, sink)
    task = asyncio.create_task(worker.run())
    await journal.append([normalize(message(i), RECEIVED) for i in range(20)])
    await until(lambda: _delivered(journal, 20), task, timeout=FAIL_BOUND)
    assert accepted(sink) == Counter({f"m{i}": 1 for i in range(20)})
    status = worker.live_status()
    assert status["state"] == "up" and status["consecutive_failures"] == 0
    assert status["last_error"] == "timeout" and status["last_delivery_at"]
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def _delivered(journal, n):
    return (await sink_counts(journal)).get("delivered", 0) == n


async def test_a_poison_event_alone_becomes_a_dead_letter(journal):
    sink = fake_sink(refused={"m5"})
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(16)])
    task = asyncio.create_task(worker.run())
    await until(lambda: _delivered(journal, 15), task, timeout=FAIL_BOUND)
    counts = await sink_counts(journal)
    assert counts.get("dead") == 1 and counts.get("pending", 0) == 0
    [dead] = await journal.dead_letters("postgres", 10)
    assert "m5" in str(dead)
    assert accepted(sink) == Counter({f"m{i}": 1 for i in range(16) if i != 5})
    sink.refused.clear()  # the operator fixed the cause
    assert await journal.requeue_dead("postgres") == 1
    worker.wake()
    await until(lambda: _delivered(journal, 16), task, timeout=FAIL_BOUND)
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_wake_skips_the_backoff_and_stop_ends_a_pause(journal, monkeypatch):
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 3600.0)
    sink = fake_sink(failures=[TransientError("server closed the connection")])
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


async def test_retry_now_skips_the_backoff_without_waking_the_sink_and_sending_tells_a_send(journal, monkeypatch):
    """Retention made room in a blocked base: the held deliveries go at once, but nobody asked for a replay
    (the sink's wake() reads the base's schema again, a request); and retention waits while a batch is being
    sent."""
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 3600.0)
    sink = fake_sink(failures=[TransientError("held")])
    woken = []
    sink.wake = lambda: woken.append(1)
    release = asyncio.Event()
    sending = []
    real_deliver = sink.deliver

    async def deliver(events):
        sending.append(worker.sending)
        if not sink.failures:
            await release.wait()
        await real_deliver(events)

    sink.deliver = deliver
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(1), RECEIVED)])
    task = asyncio.create_task(worker.run())

    async def paused():
        return worker.live_status().get("retry_in_s", 0) > 3000

    await until(paused, task, timeout=FAIL_BOUND)
    assert not worker.sending
    worker.retry_now()

    async def in_send():
        return len(sending) == 2

    await until(in_send, task, timeout=FAIL_BOUND)
    assert sending == [True, True] and worker.sending
    release.set()
    await until(lambda: _delivered(journal, 1), task, timeout=FAIL_BOUND)
    assert not worker.sending and woken == []
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_an_idle_worker_reports_a_misconfigured_sink(journal, monkeypatch):
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 3600.0)
    sink = fake_sink()
    sink.down = SetupError("password authentication failed")
    worker = DeliveryWorker(journal, sink)
    task = asyncio.create_task(worker.run())

    async def misconfigured():
        return worker.state == "misconfigured"

    await until(misconfigured, task, timeout=FAIL_BOUND)
    assert worker.live_status()["last_error"] == "password authentication failed"
    sink.down = None
    worker.wake()

    async def up():
        return worker.state == "up"

    await until(up, task, timeout=FAIL_BOUND)
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


@pytest.mark.parametrize(
    "error, pays_per_request, at_least, at_most",
    [
        (SetupError("TABLE_NOT_FOUND"), True, 600, 3600),  # an unprepared Airtable base: the operator acts, then syncs
        (SetupError("password authentication failed"), False, 0, 60),  # PostgreSQL: nothing to save
        (TransientError("HTTP 503"), True, 0, 60),  # an outage ends by itself: retried soon
    ],
)
async def test_a_misconfigured_sink_that_pays_per_request_waits_long_between_checks(
    journal, error, pays_per_request, at_least, at_most
):
    sink = fake_sink()
    if pays_per_request:
        sink.setup_retry_cap = AirtableSink.setup_retry_cap
    sink.down = error
    worker = DeliveryWorker(journal, sink, clock=lambda: 1000.0)  # frozen: retry_in_s is the backoff itself
    worker.failures = 20  # long past the first doublings

    async def backing_off():
        return worker.retry_at is not None

    task = asyncio.create_task(worker.run())
    await until(backing_off, task, timeout=FAIL_BOUND)
    assert at_least <= worker.live_status()["retry_in_s"] <= at_most
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


def capped_sink(max_records=None, refused=()):
    """An Airtable-like sink: messages `refused` for their value as Airtable refuses one (RefusedError, the
    delivery loop judges), and a records cap (c1's conversation is one record, each message one more)."""
    sink = MemorySink("airtable", 64, refusal=RefusedError, max_records=max_records)
    sink.refused = {key(message_id) for message_id in refused}
    return sink


async def already_held(sink, journal, message_ids):
    """Give the sink these journaled messages' records, as if written before: delivering them creates none."""
    events = [e for e in await journal.pending(sink.name, 0, 10_000) if e.message_id in message_ids]
    sink.tables.write(events, map_events(events))


class HealingSink(MemorySink):
    """Refuses each of `heals` (message id -> times) until it was refused alone that many times."""

    def __init__(self, heals):
        super().__init__("airtable", 64, refusal=RefusedError)
        self.heals = dict(heals)

    async def deliver(self, events):
        for e in events:
            if self.heals.get(e.message_id):
                if len(events) == 1:
                    self.heals[e.message_id] -= 1
                raise RefusedError(f"HTTP 422 INVALID_VALUE_FOR_COLUMN in {e.message_id}")
        return await super().deliver(events)


@pytest.fixture
async def airtable_journal(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["airtable"])
    yield journal
    await journal.close()


async def airtable_counts(journal):
    return (await journal.counts())["sinks"]["airtable"]


async def test_at_a_records_cap_what_fits_is_written_the_rest_held_blocked_and_nothing_dead(
    airtable_journal, monkeypatch
):
    journal = airtable_journal
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 3600.0)
    updates = {f"m{i}" for i in range(40, 64, 3)}  # their records are in the base already: no new record
    sink = capped_sink()
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(64)])
    await already_held(sink, journal, updates)
    sink.max_records = sink.records + 10  # room for ten new records
    task = asyncio.create_task(worker.run())

    async def blocked():
        return worker.state == "blocked"

    await until(blocked, task, timeout=FAIL_BOUND)
    counts = await airtable_counts(journal)
    assert counts.get("dead", 0) == 0 and counts["delivered"] == 10 and counts["pending"] == 54
    assert set(accepted(sink)) == {f"m{i}" for i in range(10)}  # the oldest, in order
    assert "BASE_RECORD_LIMIT_EXCEEDED" in worker.live_status()["last_error"]
    assert sink.calls <= 14  # two per halving level at most, never one attempt per event

    calls, failed = sink.calls, worker.failed_attempts
    worker.wake()  # a retry while blocked is a probe: one event

    async def retried():
        return worker.failed_attempts == failed + 1

    await until(retried, task, timeout=FAIL_BOUND)
    assert sink.batch_sizes[calls:] == [1] and worker.state == "blocked"
    assert (await airtable_counts(journal)).get("dead", 0) == 0

    sink.max_records = None  # the operator raised the plan, or deleted records
    worker.wake()
    await until(lambda: _airtable_delivered(journal, 64), task, timeout=FAIL_BOUND)
    assert worker.state == "up" and accepted(sink) == Counter({f"m{i}": 1 for i in range(64)})
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def _attempts_since(sink, calls, n):
    return sink.calls >= calls + n


async def _airtable_delivered(journal, n):
    return (await airtable_counts(journal)).get("delivered", 0) == n


async def test_a_cap_reached_mid_batch_holds_even_when_updates_pass_after_it(airtable_journal, monkeypatch):
    journal = airtable_journal
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 3600.0)
    sink = capped_sink()
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(8)])
    await already_held(sink, journal, {"m1", "m3", "m5"})
    sink.max_records = sink.records  # at the cap: creates refused, updates pass
    task = asyncio.create_task(worker.run())

    async def blocked():
        return worker.state == "blocked"

    await until(blocked, task, timeout=FAIL_BOUND)
    counts = await airtable_counts(journal)
    assert counts.get("dead", 0) == 0 and "m1" in accepted(sink) and "m0" not in accepted(sink)
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_an_event_refused_alone_while_records_are_created_around_it_is_dead(airtable_journal):
    journal = airtable_journal
    sink = capped_sink(refused={"m13"})
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(40)])
    task = asyncio.create_task(worker.run())
    await until(lambda: _airtable_delivered(journal, 39), task, timeout=FAIL_BOUND)
    counts = await airtable_counts(journal)
    assert counts["dead"] == 1 and counts.get("pending", 0) == 0 and worker.state == "up"
    [dead] = await journal.dead_letters("airtable", 10)
    assert "m13" in str(dead) and "refused alone each time records were created" in str(dead)
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_a_lone_refused_event_waits_for_neighbours_then_is_dead(airtable_journal, monkeypatch):
    journal = airtable_journal
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 3600.0)
    sink = capped_sink(refused={"m0"})
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(0), RECEIVED)])
    task = asyncio.create_task(worker.run())

    async def blocked():
        return worker.state == "blocked"

    await until(blocked, task, timeout=FAIL_BOUND)  # alone, nothing tells whose fault it is yet
    assert (await airtable_counts(journal)).get("dead", 0) == 0
    await journal.append([normalize(message(i), RECEIVED) for i in (1, 2)])  # traffic goes on
    worker.wake()
    await until(lambda: _airtable_delivered(journal, 2), task, timeout=FAIL_BOUND)
    assert (await airtable_counts(journal)).get("dead", 0) == 0  # the first creation ended a hold: no verdict
    await journal.append([normalize(message(3), RECEIVED)])
    await until(lambda: _dead(journal, 1), task, timeout=FAIL_BOUND)
    assert worker.state == "up" and (await airtable_counts(journal))["delivered"] == 3
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def _dead(journal, n):
    return (await airtable_counts(journal)).get("dead", 0) == n


@pytest.mark.parametrize("poison", [{"m5", "m6"}, {"m5", "m6", "m7"}])
async def test_events_refused_for_their_own_value_side_by_side_never_hold_the_base(
    airtable_journal, monkeypatch, poison
):
    journal = airtable_journal
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 0.01)
    sink = capped_sink(refused=poison)  # one contact's messages, each carrying a value the base refuses
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(40)])
    task = asyncio.create_task(worker.run())
    await journal.append([normalize(message(i), RECEIVED) for i in range(40, 70)])
    await until(lambda: _airtable_delivered(journal, 70 - len(poison)), task, timeout=FAIL_BOUND)
    if len(poison) == 2:  # two set aside, and the next event created records: never held
        assert worker.failed_attempts == 0
    await journal.append([normalize(message(i), RECEIVED) for i in range(70, 72)])  # traffic goes on
    await until(lambda: _dead(journal, len(poison)), task, timeout=FAIL_BOUND)
    await until(lambda: _airtable_delivered(journal, 72 - len(poison)), task, timeout=FAIL_BOUND)
    dead = await journal.dead_letters("airtable", 10)
    assert sorted(str(d["dedup_key"]).rsplit(":", 1)[-1] for d in dead) == sorted(poison)
    assert set(accepted(sink)) == {f"m{i}" for i in range(72)} - poison and worker.state == "up"
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_a_suspect_refused_twice_is_tried_once_more_before_it_is_parked(airtable_journal):
    journal = airtable_journal
    sink = HealingSink({"m5": 2})  # refused while the base had no room for it, then room came
    worker = DeliveryWorker(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(40)])
    task = asyncio.create_task(worker.run())
    await until(lambda: _airtable_delivered(journal, 40), task, timeout=FAIL_BOUND)
    assert (await airtable_counts(journal)).get("dead", 0) == 0 and accepted(sink)["m5"] == 1
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def blocked_at_the_cap(journal, monkeypatch, **worker_options):
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 3600.0)
    sink = capped_sink(max_records=1 + 10)  # c1's conversation and ten messages
    worker = DeliveryWorker(journal, sink, **worker_options)
    await journal.append([normalize(message(i), RECEIVED) for i in range(64)])
    task = asyncio.create_task(worker.run())

    async def blocked():
        # the worker shows the block (and arms its retry) before it writes the refusal to the journal
        noted = await journal.query(
            "SELECT count(*) FROM deliveries WHERE sink = 'airtable' AND last_error IS NOT NULL"
        )
        return worker.state == "blocked" and worker.retry_at is not None and noted[0][0] > 0

    await until(blocked, task, timeout=FAIL_BOUND)
    return sink, worker, task


async def test_a_probe_refused_for_its_own_value_does_not_keep_the_base_held_once_there_is_room(
    airtable_journal, monkeypatch
):
    journal = airtable_journal
    sink, worker, task = await blocked_at_the_cap(journal, monkeypatch)  # m10, m11, m12 held
    sink.refused = {key("m13")}  # the first probe's own value is refused, room or not
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 0.01)
    sink.max_records = None
    worker.wake()
    await until(lambda: _airtable_delivered(journal, 63), task, timeout=FAIL_BOUND)
    await until(lambda: _dead(journal, 1), task, timeout=FAIL_BOUND)
    assert "m13" not in accepted(sink) and worker.state == "up"
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_a_429_or_5xx_during_a_probe_does_not_bring_back_whole_batches(airtable_journal, monkeypatch):
    journal = airtable_journal
    sink, worker, task = await blocked_at_the_cap(journal, monkeypatch)
    sink.failures = [TransientError("HTTP 503")]
    calls = sink.calls
    worker.wake()

    async def down():
        return worker.state == "down" and worker.retry_at is not None

    await until(down, task, timeout=FAIL_BOUND)
    worker.wake()

    async def blocked_again():
        return worker.state == "blocked" and worker.retry_at is not None

    await until(blocked_again, task, timeout=FAIL_BOUND)
    assert sink.batch_sizes[calls:] == [1, 1]  # still probing with one event, not a batch split all over again
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_the_held_event_carries_the_refusal_in_the_journal(airtable_journal, monkeypatch):
    journal = airtable_journal
    sink, worker, task = await blocked_at_the_cap(journal, monkeypatch)
    [oldest] = await journal.pending("airtable", 0, 1)
    assert oldest.message_id == "m10"  # m0..m9 fitted
    [(error, attempts)] = await journal.query(
        "SELECT last_error, attempts FROM deliveries WHERE sink = 'airtable' AND event_id = ?", (oldest.id,)
    )
    assert "BASE_RECORD_LIMIT_EXCEEDED" in error and "held, nothing dead-lettered" in error and attempts >= 1
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_a_blocked_base_is_probed_at_most_hourly_and_within_the_month_s_budget(airtable_journal):
    journal = airtable_journal
    sink = capped_sink(max_records=0)
    worker = DeliveryWorker(journal, sink, clock=lambda: 1000.0)  # frozen: retry_in_s is the wait itself
    worker.failures = 20  # long past the first doublings
    await journal.append([normalize(message(i), RECEIVED) for i in range(8)])
    task = asyncio.create_task(worker.run())

    async def blocked():
        return worker.state == "blocked" and worker.retry_at is not None

    await until(blocked, task, timeout=FAIL_BOUND)
    assert 1800 <= worker.live_status()["retry_in_s"] <= 3600  # 24 to 48 probes a day
    sink.probe_spacing = lambda: 5 * 3600.0  # what a tenth of the month's remaining requests allows
    worker.wake()

    async def retried():
        return worker.failures == 1 and worker.retry_at is not None

    await until(retried, task, timeout=FAIL_BOUND)
    assert worker.live_status()["retry_in_s"] == 5 * 3600.0
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def lingering_worker(journal, linger_s, wall=None):
    sink = MemorySink("postgres", 500)
    sink.linger_s, sink.linger_batch = linger_s, 10
    worker = DeliveryWorker(journal, sink, **({"wall": wall} if wall else {}))
    task = asyncio.create_task(worker.run())

    async def up():
        return worker.state == "up"

    await until(up, task, timeout=FAIL_BOUND)
    return sink, worker, task


FRESH = lambda: RECEIVED.timestamp() + 1  # noqa: E731 - a wall clock one second after the events arrived


async def test_a_lingering_sink_waits_for_a_full_batch_then_sends_it_at_once(journal):
    sink, worker, task = await lingering_worker(journal, linger_s=3600, wall=FRESH)
    await journal.append([normalize(message(i), RECEIVED) for i in range(3)])
    await journal.append([normalize(message(i), RECEIVED) for i in range(3, 9)])
    assert sink.batch_sizes == [] and (await sink_counts(journal))["pending"] == 9
    await journal.append([normalize(message(i), RECEIVED) for i in range(9, 12)])  # 12 >= 10: go
    await until(lambda: _delivered(journal, 12), task, timeout=FAIL_BOUND)
    assert sink.batch_sizes == [12]  # one delivery, however many webhooks brought them
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def lingering(worker, task):
    async def waiting():
        return worker.lingering

    await until(waiting, task, "lingering", timeout=FAIL_BOUND)


@pytest.mark.parametrize("flush", ["wake", "stop"])
async def test_sync_sighup_and_stop_deliver_what_lingers_at_once(journal, flush):
    sink, worker, task = await lingering_worker(journal, linger_s=3600, wall=FRESH)
    await journal.append([normalize(message(i), RECEIVED) for i in range(3)])
    await lingering(worker, task)
    assert sink.batch_sizes == []
    getattr(worker, flush)()
    if flush == "stop":
        await asyncio.wait_for(task, FAIL_BOUND)
        assert await _delivered(journal, 3)
    else:
        await until(lambda: _delivered(journal, 3), task, timeout=FAIL_BOUND)
        worker.stop()
        await asyncio.wait_for(task, FAIL_BOUND)
    assert sink.batch_sizes == [3]


async def test_what_lingers_goes_once_the_oldest_is_linger_s_old(journal):
    sink, worker, task = await lingering_worker(journal, linger_s=0.2)
    await journal.append([normalize(message(0), datetime.now(UTC))])
    await lingering(worker, task)
    await journal.append([normalize(message(1), datetime.now(UTC))])  # joins the wait
    await until(lambda: _delivered(journal, 2), task, timeout=FAIL_BOUND)
    assert sink.batch_sizes == [2]
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def test_what_arrives_during_a_slow_delivery_lingers_in_turn(journal):
    sink, worker, task = await lingering_worker(journal, linger_s=3600, wall=FRESH)
    gate, sending = asyncio.Event(), asyncio.Event()
    deliver = sink.deliver

    async def slow(events):
        if not sink.batch_sizes:
            sending.set()
            await gate.wait()  # the first request is slow: a message arrives meanwhile
        return await deliver(events)

    sink.deliver = slow
    await journal.append([normalize(message(i), RECEIVED) for i in range(10)])
    await until(lambda: _is(sending.is_set(), True), task, timeout=FAIL_BOUND)  # the ten are read and on their way
    await journal.append([normalize(message(10), RECEIVED)])
    gate.set()
    await until(lambda: _delivered(journal, 10), task, timeout=FAIL_BOUND)
    await lingering(worker, task)  # the late one waits for company instead of costing a request alone
    assert sink.batch_sizes == [10]
    await journal.append([normalize(message(i), RECEIVED) for i in range(11, 20)])
    await until(lambda: _delivered(journal, 20), task, timeout=FAIL_BOUND)
    assert sink.batch_sizes == [10, 10]
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)


async def _is(value, expected):
    return value == expected


@pytest.mark.parametrize("idle_check_s, checked_again", [(None, False), (0.01, True)])
async def test_a_sink_that_pays_per_request_is_not_checked_while_idle_and_up(
    journal, monkeypatch, idle_check_s, checked_again
):
    monkeypatch.setattr(delivery, "IDLE_CHECK_INTERVAL", 0.01)  # idle loops come round fast
    sink = fake_sink()
    sink.idle_check_s = idle_check_s
    worker = DeliveryWorker(journal, sink)
    task = asyncio.create_task(worker.run())

    async def looped():
        return worker.state == "up" and (sink.checks > 3 or not checked_again)

    await until(looped, task, timeout=FAIL_BOUND)
    for _ in range(20):  # twenty idle turns at least
        await asyncio.sleep(0.01)
    assert (sink.checks > 1) == checked_again
    before = sink.checks
    worker.wake()  # sync or SIGHUP: checked at once all the same (Airtable reads its schema again)

    async def checked():
        return sink.checks > before

    await until(checked, task, timeout=FAIL_BOUND)
    worker.stop()
    await asyncio.wait_for(task, FAIL_BOUND)
