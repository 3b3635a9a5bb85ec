"""Errors that belong to the base, not to a record: the Airtable sink and its delivery loop against the
emulator's records cap and a key row typed twice by hand, through the real pyairtable."""

import json
import time
import urllib.request
from datetime import UTC, datetime

import pytest

from daemon import delivery
from daemon.events import normalize
from daemon.journal import Journal
from daemon.ratelimit import MonthlyRequests, RequestBudget, month_of
from daemon.records import conversation_id_for
from daemon.sinks.airtable import PROBE_SHARE, AirtableClient, AirtableSink, init_base, probe_spacing
from tests.integration.test_airtable_sink import (
    BASE,
    NAMES,
    RECEIVED,
    TOKEN,
    client_for,
    delivered,
    emulator_thread,
    message,
    rows,
    started,
    stats,
    stop,
)
from tests.support import until


@pytest.fixture
def emulator():
    running = emulator_thread()
    yield running
    running.stop()


@pytest.fixture
async def journal(tmp_path):
    journal = await Journal.open(tmp_path / "j.sqlite", ["airtable"])
    yield journal
    await journal.close()


def set_cap(emulator, max_records):
    def apply():
        emulator.emulator.bases[BASE].max_records = max_records

    emulator.run(apply)


def typed_by_hand(emulator, table, fields):
    """What an operator types in the Airtable UI: nothing stops a key being typed twice."""
    body = json.dumps({"base": BASE, "table": table, "fields": fields}).encode()
    with urllib.request.urlopen(
        urllib.request.Request(emulator.url + "/_emulator/records", data=body), timeout=10
    ) as answer:
        return json.loads(answer.read())


async def airtable_counts(journal):
    return (await journal.counts())["sinks"]["airtable"]


async def test_at_the_records_cap_what_fits_lands_nothing_is_dead_and_all_drains_once_raised(
    emulator, journal, monkeypatch
):
    monkeypatch.setattr(delivery, "backoff_delay", lambda failures, **_: 3600.0)  # still while we look
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    await init_base(sink.client, NAMES)
    worker, task = await started(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(10)])
    await until(lambda: delivered(journal, 10), task, "first messages")
    set_cap(emulator, 7 + 10 + 5)  # 7 conversations and 10 interactions: room for 5 more records
    requests = stats(emulator)["requests"]
    await journal.append([normalize(message(i), RECEIVED) for i in range(10, 50)])

    async def blocked():
        return worker.state == "blocked"

    await until(blocked, task, "blocked")
    status = worker.live_status()
    assert "BASE_RECORD_LIMIT_EXCEEDED" in status["last_error"] and "maximum of 22 records" in status["last_error"]
    counts = await airtable_counts(journal)
    assert counts.get("dead", 0) == 0 and counts["delivered"] == 15 and counts["pending"] == 35
    assert sorted(r["MessageId"] for r in rows(emulator, "Interactions")) == sorted(f"wamid.{i}" for i in range(15))
    # updates need no room: the conversations already count every message the journal holds
    assert sum(r["MessageCount"] for r in rows(emulator, "Conversations")) == 50
    assert stats(emulator)["requests"] - requests <= 30  # not one attempt (or dead letter) per event

    requests, failed = stats(emulator)["requests"], worker.failed_attempts
    worker.wake()  # a retry while blocked: a probe, one event

    async def retried():
        return worker.failed_attempts == failed + 1

    await until(retried, task, "retried")
    assert worker.state == "blocked"
    assert stats(emulator)["requests"] - requests <= 3  # the schema, one event's creating write, its key looked up
    assert (await airtable_counts(journal)).get("dead", 0) == 0

    set_cap(emulator, None)  # the plan is upgraded
    worker.wake()
    await until(lambda: delivered(journal, 50), task, "drained")
    assert sorted(r["MessageId"] for r in rows(emulator, "Interactions")) == sorted(f"wamid.{i}" for i in range(50))
    assert worker.state == "up" and (await airtable_counts(journal)).get("dead", 0) == 0
    await stop(worker, task, sink)


async def test_a_blocked_base_costs_one_request_a_probe(emulator, journal, monkeypatch):
    quick = {"left": 0}  # how many of the next waits are short; the others are an hour, still while we look

    def backoff(failures, **_):
        if quick["left"]:
            quick["left"] -= 1
            return 0.05
        return 3600.0

    monkeypatch.setattr(delivery, "backoff_delay", backoff)
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    await init_base(sink.client, NAMES)
    worker, task = await started(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(10)])
    await until(lambda: delivered(journal, 10), task, "first messages")
    set_cap(emulator, 7 + 10)  # full: 7 conversations and 10 interactions
    await journal.append([normalize(message(i), RECEIVED) for i in range(10, 30)])

    async def waiting(failed):
        return worker.failed_attempts == failed and worker.retry_at is not None and worker.state == "blocked"

    await until(lambda: waiting(1), task, "blocked")
    worker.wake()  # the first probe of an event also looks its key up once (a key typed twice by hand?)
    await until(lambda: waiting(2), task, "probed once")

    requests = stats(emulator)["requests"]
    quick["left"] = 4
    worker.wake()  # five probes in a row
    await until(lambda: waiting(7), task, "probed five times")
    spent = stats(emulator)["requests"] - requests
    assert spent - 1 <= 5  # the schema read a wake asks for, then one request a probe: its interaction write
    counts = await airtable_counts(journal)
    assert counts.get("dead", 0) == 0 and counts["pending"] == 20
    await stop(worker, task, sink)


def test_with_a_monthly_limit_probes_keep_to_a_share_of_what_is_left():
    now = datetime(2026, 11, 16, tzinfo=UTC).timestamp()  # 15 days before the month turns
    month_left = 15 * 86400
    assert PROBE_SHARE <= 0.1
    assert probe_spacing(1000, 500, now) == pytest.approx(month_left / (PROBE_SHARE * 500))  # Free, half used
    assert probe_spacing(0, 500, now) == 0  # no limit: the hourly cap alone
    assert probe_spacing(1000, 1000, now) == 0  # at the limit the base is held as `quota` anyway
    assert probe_spacing(1000, 998, now) == month_left  # too little left: next month
    new_year_s_eve = datetime(2026, 12, 31, tzinfo=UTC).timestamp()
    assert probe_spacing(1000, 0, new_year_s_eve) == pytest.approx(86400 / (PROBE_SHARE * 1000))


async def test_the_sink_spaces_probes_by_its_month_s_requests(emulator):
    monthly = MonthlyRequests(1000, month_of(time.time()), 500)
    sink = AirtableSink(AirtableClient(TOKEN, BASE, emulator.url, RequestBudget(5, monthly=monthly)), NAMES, None)
    assert sink.probe_spacing() == pytest.approx(probe_spacing(1000, 500, time.time()), rel=0.01)
    unlimited = AirtableSink(client_for(emulator), NAMES, None)
    assert unlimited.probe_spacing() == 0
    await sink.close()
    await unlimited.close()


async def test_a_key_row_typed_twice_by_hand_makes_one_dead_letter_that_names_it(emulator, journal):
    sink = AirtableSink(client_for(emulator), NAMES, journal.conversations)
    await init_base(sink.client, NAMES)
    worker, task = await started(journal, sink)
    await journal.append([normalize(message(i), RECEIVED) for i in range(7)])  # contacts c0..c6
    await until(lambda: delivered(journal, 7), task, "first messages")
    twice = conversation_id_for("bot1", "c3", None)

    copy = typed_by_hand(emulator, "Conversations", {"ConversationId": twice, "CustomerName": "typed again"})
    later = [i for i in range(7, 40) if i % 7 != 3 or i == 24]  # c3 writes once, in the middle
    await journal.append([normalize(message(i), RECEIVED) for i in later])
    await until(lambda: delivered(journal, 7 + len(later) - 1), task, "the others delivered")
    counts = await airtable_counts(journal)
    assert counts["dead"] == 1 and counts.get("pending", 0) == 0 and worker.state == "up"
    [dead] = await journal.dead_letters("airtable", 10)
    reason = str(dead)
    assert "Conversations" in reason and "ConversationId" in reason and twice in reason
    assert "delete the duplicate row in Airtable" in reason and "chatledger replay --dead" in reason

    def delete_the_copy():
        del emulator.emulator.bases[BASE].table("Conversations").records[copy["id"]]

    emulator.run(delete_the_copy)
    assert await journal.requeue_dead("airtable") == 1
    worker.wake()
    await until(lambda: delivered(journal, 7 + len(later)), task, "replayed")
    assert "wamid.24" in {r["MessageId"] for r in rows(emulator, "Interactions")}
    await stop(worker, task, sink)
