"""The daemon's reconciler against the SendPulse emulator: its windows, its failures, its status."""

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from loguru import logger

from daemon.config import SendPulseConfig, load_config
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
    return Reconciler(
        config, journal, SendPulseClient(emulator.url, CLIENT_ID, secret, RequestBudget(10), backoff=0.01, retries=1)
    )


async def test_the_first_window_starts_at_the_newest_event_less_the_margin(emulator, journal):
    reconciler = reconciler_of(emulator, journal, first_window_h=5)
    empty = await reconciler._start_since()
    assert abs(empty - (datetime.now(UTC) - timedelta(hours=5))) < timedelta(minutes=1)
    received = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    element = {
        "title": "incoming_message",
        "service": "whatsapp",
        "bot": {"id": BOT},
        "contact": {"id": "c1", "phone": "5511987654321"},
        "info": {"message": {"id": "m1", "channel_data": {"message": {"type": "text", "text": {"body": "oi"}}}}},
        "date": 1764489600000,
    }
    await journal.append([normalize(element, received, "{}")])
    assert await reconciler._start_since() == received - MARGIN
    await reconciler.close()


async def test_runs_fetch_back_and_say_so_in_status(emulator, journal):
    person = contact(emulator)
    emulator.run(emulator.emulator.add_message, person.id, "in", "oi")
    reconciler = reconciler_of(emulator, journal)
    assert reconciler.status()["state"] == "starting"
    report = await reconciler.run(datetime.now(UTC) - timedelta(hours=1))
    assert (report.added, report.error) == (1, None)
    status = reconciler.status()
    assert (status["state"], status["seen"], status["added"], status["added_total"]) == ("up", 1, 1, 1)
    assert status["last_run_at"] and status["last_reconciled_at"] and status["window"]["since"]
    await reconciler.run(datetime.now(UTC) - timedelta(hours=1))
    assert (reconciler.status()["added"], reconciler.status()["added_total"], reconciler.status()["runs"]) == (0, 1, 2)
    await reconciler.close()


async def test_bad_credentials_are_logged_once_and_sendpulse_down_each_time(emulator, journal, logged):
    reconciler = reconciler_of(emulator, journal, secret="a-wrong-secret")
    since = datetime.now(UTC) - timedelta(hours=1)
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
    report = await reconciler.run(datetime.now(UTC) - timedelta(hours=1))
    assert report.error and reconciler.state == "down" and reconciler.failures == 1
    assert any("reconciliation failed" in line for line in logged)
    await reconciler.close()


async def _true(value):
    return value


async def test_an_unreadable_journal_at_start_reads_the_first_window(emulator, journal, logged):
    reconciler = reconciler_of(emulator, journal, first_window_h=3)
    await journal.close()
    since = await reconciler._start_since()
    assert abs(since - (datetime.now(UTC) - timedelta(hours=3))) < timedelta(minutes=1)
    assert any("cannot read the journal's newest event" in line for line in logged)
    await reconciler.close()


@pytest.mark.parametrize("status_window_h, learned", [(24, 1), (0, 0)])
async def test_each_run_follows_up_the_statuses_of_status_window_h(emulator, journal, status_window_h, learned):
    person = contact(emulator)
    message = emulator.run(
        emulator.emulator.add_message, person.id, "out", "oferta", created_at=datetime.now(UTC) - timedelta(hours=3)
    )
    reconciler = reconciler_of(emulator, journal, status_window_h=status_window_h)
    assert (await reconciler.run(datetime.now(UTC) - timedelta(hours=4))).added == 1
    emulator.run(emulator.emulator.set_status, message.id, 4)  # read hours later
    report = await reconciler.run(datetime.now(UTC) - timedelta(minutes=15))
    assert (report.statuses, report.followed_up) == (learned, learned)
    status = reconciler.status()
    assert (status["statuses"], status["statuses_total"], status["followed_up"]) == (learned, learned, learned)
    await reconciler.close()


async def test_status_counts_the_failed_runs_in_a_row_and_since_when(emulator, journal):
    reconciler = reconciler_of(emulator, journal, secret="a-wrong-secret")
    since = datetime.now(UTC) - timedelta(hours=1)
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


class GatedClient(SendPulseClient):
    """A real client whose run waits at its first request until `gate` opens: a run held in progress."""

    def __init__(self, url, secret=SECRET):
        super().__init__(url, CLIENT_ID, secret, RequestBudget(10), backoff=0.01, retries=1)
        self.entered, self.gate = asyncio.Event(), asyncio.Event()

    async def bots(self):
        self.entered.set()
        await self.gate.wait()
        return await super().bots()


async def test_a_new_client_takes_the_next_run_at_once_and_the_run_in_progress_ends_with_the_old(emulator, journal):
    person = contact(emulator)
    emulator.run(emulator.emulator.add_message, person.id, "in", "missed")
    old = GatedClient(emulator.url, secret="a-wrong-secret")
    config = SendPulseConfig(
        client_id=CLIENT_ID, client_secret="a-wrong-secret", api_url=emulator.url, reconcile_interval_s=3600
    )
    reconciler = Reconciler(config, journal, old)
    task = asyncio.create_task(reconciler.run_forever())
    try:
        await until(lambda: _true(old.entered.is_set()), task, "the run in progress")
        new = SendPulseClient(emulator.url, CLIENT_ID, SECRET, RequestBudget(10))
        reconciler.use(new)
        assert reconciler.client is new
        old.gate.set()
        # the run in progress ended with the old credentials; the next came at once, not an hour later
        await until(lambda: _true(reconciler.state == "up"), task, "the run with the new client")
        assert old.requests and old._session is None  # it sent the run's request, and was closed after it
        status = reconciler.status()
        assert (status["runs"], status["failed_runs"], status["added_total"]) == (2, 1, 1)
        assert status["requests_total"] == old.requests + new.requests and old.requests and new.requests
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reconciler.close()


async def test_stop_ends_the_loop_once_the_run_in_progress_is_done(emulator, journal):
    client = GatedClient(emulator.url)
    reconciler = Reconciler(
        SendPulseConfig(client_id=CLIENT_ID, client_secret=SECRET, api_url=emulator.url, reconcile_interval_s=0),
        journal,
        client,
    )
    task = asyncio.create_task(reconciler.run_forever())
    try:
        await until(lambda: _true(client.entered.is_set()), task, "the run in progress")
        reconciler.stop()
        await asyncio.sleep(0)
        assert not task.done() and reconciler.running
        client.gate.set()
        await asyncio.wait_for(task, 30)  # returns: the loop ended, not cancelled
        assert (reconciler.runs, reconciler.state) == (1, "up")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reconciler.close()


async def test_a_changed_interval_and_a_wake_take_effect_without_waiting_out_the_old_interval(emulator, journal):
    reconciler = reconciler_of(emulator, journal, reconcile_interval_s=0)  # at start, then on demand only
    task = asyncio.create_task(reconciler.run_forever())
    try:
        await until(lambda: _true(reconciler.runs == 1), task, "the run at start")
        reconciler.settings.reconcile_interval_s = 0.05  # as SIGHUP sets it
        reconciler.wake()
        await until(lambda: _true(reconciler.runs >= 4), task, "runs at the new interval")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reconciler.close()


# -- SIGHUP: the daemon switches reconciliation on and off and replaces its client ------------------------------


def write(path, sendpulse=None):
    text = (
        '[server]\nlisten = "127.0.0.1:8080"\nwebhook_token = "reload-token-0123456789abcdef"\n'
        '[journal]\npath = "journal.sqlite"\n[status]\nsocket = "status.sock"\n'
    )
    if sendpulse:
        text += "[sendpulse]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in sendpulse.items())
    path.write_text(text)


async def test_sighup_switches_reconciliation_on_replaces_its_client_and_switches_it_off(emulator, tmp_path, logged):
    from daemon.app import Daemon

    person = contact(emulator)
    emulator.run(emulator.emulator.add_message, person.id, "in", "missed")
    path = tmp_path / "chatledger.toml"
    write(path)
    daemon = Daemon(load_config(path, {}), path)
    daemon.journal = await Journal.open(tmp_path / "journal.sqlite", [])
    loop = asyncio.create_task(daemon.reconciliation.run())

    async def source():
        return (await daemon.snapshot())["sources"]["sendpulse"]

    async def state_is(state):
        return (await source())["state"] == state

    try:
        assert await source() == {"state": "disabled"}
        wrong = {
            "client_id": CLIENT_ID,
            "client_secret": "a-wrong-secret",
            "api_url": emulator.url,
            "reconcile_interval_s": 3600,
        }
        write(path, wrong)
        await daemon.reload_settings()
        await until(lambda: state_is("misconfigured"), loop, "switched on, refused")
        first = daemon.reconciliation.reconciler

        write(path, {**wrong, "client_secret": SECRET})
        await daemon.reload_settings()
        await until(lambda: state_is("up"), loop, "the fixed secret's run, at once")
        assert daemon.reconciliation.reconciler is first  # the same reconciler, its counters kept
        assert ((await source())["runs"], (await source())["failed_runs"], (await source())["added_total"]) == (2, 1, 1)

        write(path)
        await daemon.reload_settings()
        assert await source() == {"state": "disabled"}
        await until(lambda: _true(first.client._session is None), loop, "its client closed")
        assert not loop.done()  # the loop waits to be switched on again; nothing crashed
        text = "\n".join(logged)
        assert "SendPulse reconciliation switched on" in text and "SendPulse client replaced" in text
        assert "SendPulse reconciliation switched off" in text
        assert SECRET not in text and "a-wrong-secret" not in text
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        if daemon.reconciliation.reconciler:
            await daemon.reconciliation.reconciler.close()
        await daemon.journal.close()
