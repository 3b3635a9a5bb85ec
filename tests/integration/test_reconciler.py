"""The daemon's reconciler against the SendPulse emulator: its windows, its failures, its status."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from loguru import logger

from daemon.config import SendPulseConfig
from daemon.events import normalize
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.reconciler import MARGIN, Reconciler
from daemon.sendpulse import SendPulseClient
from tests.integration.test_reconcile import BOT, CLIENT_ID, SECRET, contact, serve
from tests.support import until


@pytest.fixture
def emulator():
    running = serve(rate=10_000)
    yield running
    running.stop()


@pytest.fixture
async def journal(tmp_path):
    opened = await Journal.open(tmp_path / "journal.sqlite", ["postgres"], page_limit=None)
    yield opened
    await opened.close()


@pytest.fixture
def logged():
    lines = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{level} {message}")
    yield lines
    logger.remove(sink)


def reconciler_of(emulator, journal, secret=SECRET, **settings):
    config = SendPulseConfig(client_id=CLIENT_ID, client_secret=secret, api_url=emulator.url, **settings)
    return Reconciler(config, journal, SendPulseClient(emulator.url, CLIENT_ID, secret, RequestBudget(10),
                                                       backoff=0.01, retries=1))


async def test_the_first_window_starts_at_the_newest_event_less_the_margin(emulator, journal):
    reconciler = reconciler_of(emulator, journal, first_window_h=5)
    empty = await reconciler._start_since()
    assert abs(empty - (datetime.now(timezone.utc) - timedelta(hours=5))) < timedelta(minutes=1)
    received = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)
    element = {"title": "incoming_message", "service": "whatsapp", "bot": {"id": BOT},
               "contact": {"id": "c1", "phone": "5511987654321"},
               "info": {"message": {"id": "m1", "channel_data": {"message": {"type": "text", "text": {"body": "oi"}}}}},
               "date": 1764489600000}
    await journal.append([normalize(element, received, "{}")])
    assert await reconciler._start_since() == received - MARGIN
    await reconciler.close()


async def test_runs_fetch_back_and_say_so_in_status(emulator, journal):
    person = contact(emulator)
    emulator.run(emulator.emulator.add_message, person.id, "in", "oi")
    reconciler = reconciler_of(emulator, journal)
    assert reconciler.status()["state"] == "starting"
    report = await reconciler.run(datetime.now(timezone.utc) - timedelta(hours=1))
    assert (report.added, report.error) == (1, None)
    status = reconciler.status()
    assert (status["state"], status["seen"], status["added"], status["added_total"]) == ("up", 1, 1, 1)
    assert status["last_run_at"] and status["last_reconciled_at"] and status["window"]["since"]
    await reconciler.run(datetime.now(timezone.utc) - timedelta(hours=1))
    assert (reconciler.status()["added"], reconciler.status()["added_total"], reconciler.status()["runs"]) == (0, 1, 2)
    await reconciler.close()


async def test_bad_credentials_are_logged_once_and_sendpulse_down_each_time(emulator, journal, logged):
    reconciler = reconciler_of(emulator, journal, secret="a-wrong-secret")
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    for _ in range(3):
        report = await reconciler.run(since)
        assert report.error
    status = reconciler.status()
    assert status["state"] == "misconfigured" and "client_id" in status["last_error"]
    assert status["failed_runs"] == 3
    misconfigured = [line for line in logged if "misconfigured" in line]
    assert len(misconfigured) == 1 and misconfigured[0].startswith("ERROR")
    assert not any("a-wrong-secret" in line for line in logged)
    await reconciler.close()

    nobody = type("Down", (), {"url": "http://127.0.0.1:9"})()  # refused: SendPulse down
    reconciler = reconciler_of(nobody, journal)
    for _ in range(2):
        await reconciler.run(since)
    assert reconciler.status()["state"] == "down" and reconciler.status()["last_error"]
    assert len([line for line in logged if "reconciliation failed (down)" in line]) == 2
    await reconciler.close()


async def test_each_interval_reads_from_the_last_runs_start_less_the_margin(emulator, journal):
    person = contact(emulator)
    emulator.run(emulator.emulator.add_message, person.id, "in", "first")
    reconciler = reconciler_of(emulator, journal, reconcile_interval_s=0.05)
    task = asyncio.create_task(reconciler.run_forever())
    try:
        await until(lambda: _true(reconciler.added_total == 1), task, "the first run")
        first = reconciler.last_run_at
        emulator.run(emulator.emulator.add_message, person.id, "out", "second")
        await until(lambda: _true(reconciler.added_total == 2), task, "a later run")
        later = reconciler.status()["window"]["since"]
        # from the last run's start less the margin, not from the first window's start
        assert abs(datetime.fromisoformat(later.replace("Z", "+00:00")) - (first - MARGIN)) < timedelta(seconds=1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reconciler.close()


async def test_a_failing_run_is_retried_over_the_same_window_and_never_ends_the_loop(emulator, journal):
    nobody = type("Down", (), {"url": "http://127.0.0.1:9"})()
    reconciler = reconciler_of(nobody, journal, reconcile_interval_s=0.05)
    task = asyncio.create_task(reconciler.run_forever())
    try:
        await until(lambda: _true(reconciler.failures >= 1), task, "a failed run")
        window = reconciler.status()["window"]["since"]
        await until(lambda: _true(reconciler.failures >= 3), task, "two more failed runs")
        assert reconciler.state == "down" and reconciler.last_reconciled_at is None
        assert reconciler.status()["window"]["since"] == window  # the missed window is read again whole
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reconciler.close()


async def test_an_unexpected_failure_is_a_failed_run_not_a_crash(emulator, journal, logged):
    person = contact(emulator)
    emulator.run(emulator.emulator.add_message, person.id, "in", "oi")
    reconciler = reconciler_of(emulator, journal)
    await journal.close()  # appending now fails: not SendPulse's fault, and no reason to stop the daemon
    report = await reconciler.run(datetime.now(timezone.utc) - timedelta(hours=1))
    assert report.error and reconciler.state == "down" and reconciler.failures == 1
    assert any("reconciliation failed" in line for line in logged)
    await reconciler.close()


async def _true(value):
    return value


async def test_an_unreadable_journal_at_start_reads_the_first_window(emulator, journal, logged):
    reconciler = reconciler_of(emulator, journal, first_window_h=3)
    await journal.close()
    since = await reconciler._start_since()
    assert abs(since - (datetime.now(timezone.utc) - timedelta(hours=3))) < timedelta(minutes=1)
    assert any("cannot read the journal's newest event" in line for line in logged)
    await reconciler.close()


async def test_status_counts_the_failed_runs_in_a_row_and_since_when(emulator, journal):
    reconciler = reconciler_of(emulator, journal, secret="a-wrong-secret")
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    await reconciler.run(since)
    first = reconciler.status()
    assert (first["failed_in_a_row"], first["failing_since"]) == (1, first["last_run_at"])
    await reconciler.run(since)
    assert (reconciler.status()["failed_in_a_row"], reconciler.status()["failing_since"]) == (2, first["last_run_at"])
    await reconciler.close()
    reconciler.client = SendPulseClient(emulator.url, CLIENT_ID, SECRET, RequestBudget(10))  # the secret fixed
    await reconciler.run(since)
    status = reconciler.status()
    assert (status["state"], status["failed_in_a_row"], status["failing_since"]) == ("up", 0, None)
    assert status["failed_runs"] == 2  # since start, unlike the spell
    await reconciler.close()
