"""The daemon's background loops, each run by the daemon as a named, supervised task: a loop ends only by
failing (which stops the daemon loudly), or when the daemon cancels it at stop.

Each takes what it works on from the composition root (daemon.app) and reads the running config's
sections as it goes, so that SIGHUP reaches it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger

from daemon.alerts import RECORDS_WARNING_SHARES, AlertLimiter, AlertMemory, AlertRules, AlertSender
from daemon.backfill import Backfill
from daemon.config import AlertsConfig, Config, SendPulseConfig
from daemon.delivery import DeliveryWorker
from daemon.journal import Journal, JournalUnavailable
from daemon.operations import postgres_rows
from daemon.ratelimit import MonthlyRequests
from daemon.reconciler import Reconciler, client_for
from daemon.sdnotify import Notifier
from daemon.sinks.airtable import AirtableSink, BaseAccess
from daemon.sinks.base import SinkError
from daemon.snapshot import Snapshot, SourceStatus
from daemon.workers import Workers

WATCHDOG_PING_TIMEOUT = 5.0
RETENTION_FIRST_DELAY = 60.0  # let a restart catch up before purging
RETENTION_INTERVAL = 3600.0
RETENTION_BATCH = 500  # events per purge transaction: short, so webhooks never wait long
RETENTION_PAUSE = 0.05
ALERT_CHECK_INTERVAL = 5.0
MONTH_SAVE_INTERVAL = 5.0
AIRTABLE_RETENTION_INTERVAL = 86400.0  # a listing of each table a day: 90 requests a month
AIRTABLE_RETENTION_MIN_GAP = 3600.0  # a blocked base calls for a purge soon, but not one after another
RETENTION_PRESSURE_POLL = 5.0
SPARE_POLL = 1.0


async def idle() -> None:
    """What a loop with nothing to do runs: it waits to be cancelled at stop."""
    await asyncio.Event().wait()


async def watchdog(notifier: Notifier, journal: Journal) -> None:
    """Ping systemd only while the journal writer answers: a hung writer gets us restarted."""
    interval = notifier.watchdog_interval
    if interval is None:
        await idle()  # no watchdog configured
        return
    while True:
        try:
            await asyncio.wait_for(journal.ping(), min(WATCHDOG_PING_TIMEOUT, interval))
        except TimeoutError:
            logger.error(
                "journal writer did not answer within {:.1f} s; withholding WATCHDOG=1",
                min(WATCHDOG_PING_TIMEOUT, interval),
            )
        else:
            notifier.watchdog()
        await asyncio.sleep(interval)


async def backfill(work: Backfill) -> None:
    """Make pending what was journaled before a sink was enabled (after READY: readiness never waits for
    it), then rest."""
    await work.run()
    await idle()


class JournalRetention:
    """[journal] retention_days: purge old, fully delivered events in small batches, a minute after start,
    then hourly; `purged` counts them since start. A purge is one short transaction: an interrupted pass
    resumes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.purged = 0

    async def run(self, journal: Journal) -> None:
        sinks = list(self.config.enabled_sinks)
        if not self.config.journal.retention_days or not sinks:
            logger.info(
                "journal retention off ({})",
                "no sink enabled: the journal is the only copy" if not sinks else "retention_days = 0",
            )
            if not sinks:
                await idle()
        await asyncio.sleep(RETENTION_FIRST_DELAY)
        while True:
            days = self.config.journal.retention_days  # SIGHUP may change it, to 0 too
            if days:
                await self._purge(journal, sinks, datetime.now(UTC) - timedelta(days=days))
            await asyncio.sleep(RETENTION_INTERVAL)

    async def _purge(self, journal: Journal, sinks: list[str], cutoff: datetime) -> None:
        purged = 0
        while True:
            try:
                batch = await journal.purge(cutoff, sinks, RETENTION_BATCH)
            except JournalUnavailable as exc:
                logger.warning("journal retention paused: {}", exc)
                break
            purged += batch
            if batch < RETENTION_BATCH:
                break
            await asyncio.sleep(RETENTION_PAUSE)  # intake goes first
        if purged:
            self.purged += purged
            logger.info(
                "journal retention: purged {} events received before {} and delivered to {}",
                purged,
                cutoff.isoformat(timespec="seconds"),
                ", ".join(sinks),
            )


async def alerts(
    journal: Journal, settings: AlertsConfig, sender: AlertSender, snapshot: Callable[[], Awaitable[Snapshot]]
) -> None:
    """Compare the status every few seconds and raise what changed: sinks down or back, the Airtable
    fallback, new dead letters, an old backlog, the Airtable quota, SendPulse reconciliation misconfigured
    or down for long. What was told is kept in the journal: a restart neither repeats it nor leaves a
    problem that ended meanwhile open. Errors here are logged; they never stop the daemon or delivery."""
    memory = AlertMemory.loads(await journal.meta(AlertMemory.JOURNAL_KEY))
    rules = AlertRules(settings.pending_age_threshold_s, memory)
    limiter = AlertLimiter(settings.min_interval_s, time.monotonic, memory)
    while True:
        await asyncio.sleep(ALERT_CHECK_INTERVAL)
        rules.threshold, limiter.interval = settings.pending_age_threshold_s, settings.min_interval_s  # SIGHUP
        try:
            for alert in limiter.admit(rules.evaluate(await snapshot())):
                sender.submit(alert)
            if memory.dirty:
                memory.dirty = False
                await journal.set_meta(AlertMemory.JOURNAL_KEY, memory.dumps())
        except JournalUnavailable as exc:
            memory.dirty = True
            logger.warning("what the alerts told is not saved yet: {}", exc)
        except Exception:
            logger.exception("alert check failed")


async def save_month(journal: Journal, monthly: MonthlyRequests | None) -> None:
    """Keep the Airtable base's monthly request count in the journal, so that a restart does not reset it."""
    if monthly is None or not monthly.dirty:
        return
    try:
        await journal.set_meta(MonthlyRequests.JOURNAL_KEY, monthly.dumps())
    except JournalUnavailable as exc:
        monthly.dirty = True
        logger.warning("the Airtable monthly request count is not saved yet: {}", exc)


async def month(journal: Journal, monthly: MonthlyRequests | None) -> None:
    """save_month every few seconds."""
    while True:
        await asyncio.sleep(MONTH_SAVE_INTERVAL)
        await save_month(journal, monthly)


async def airtable_retention(config: Config, workers: Workers) -> None:
    """[airtable] retention_days: delete from the base what is older and PostgreSQL holds, on spare budget
    only: daily, and soon once the base is blocked at its cap or near it (never twice within
    AIRTABLE_RETENTION_MIN_GAP). A run that fails is logged and tried again later; one that made room in
    a blocked base lets the held deliveries go at once."""
    if "airtable" not in workers or not config.postgres.enabled:
        if config.airtable.retention_days:
            logger.warning(
                "[airtable] retention_days is set, but nothing is deleted from Airtable: PostgreSQL "
                "is not configured, so nothing there can be known to be held elsewhere"
            )
        await idle()
    from daemon.sinks.airtable_retention import RetentionSchedule, day_start

    schedule = RetentionSchedule(RETENTION_FIRST_DELAY, AIRTABLE_RETENTION_INTERVAL, AIRTABLE_RETENTION_MIN_GAP)
    while True:
        # SIGHUP may change the days (to 0 too), the DSN, and replace the sink
        days, worker, postgres = config.airtable.retention_days, workers["airtable"], postgres_rows(config)
        sink = workers.sink_of("airtable", AirtableSink)
        if not days or sink is None:
            await asyncio.sleep(RETENTION_PRESSURE_POLL)
            continue
        cutoff = datetime.now(UTC) - timedelta(days=days)
        pressure = _records_pressure(worker, sink)
        if not schedule.due(pressure is not None, day_start(cutoff).date()):
            await asyncio.sleep(RETENTION_PRESSURE_POLL)
            continue
        if pressure:
            logger.info("airtable retention: {}, deleting what is older than {} days now", pressure, days)
        schedule.started(day_start(cutoff).date())
        removed, error = await _purge_airtable(sink.access(), postgres, cutoff, _spare(worker, sink))
        schedule.finished(ok=error is None)
        if error is not None:
            logger.warning("airtable retention stopped, tried again later: {}", error)
        if removed and worker.state == "blocked":
            logger.info("airtable retention made room for {} records: the held deliveries go now", removed)
            worker.retry_now()


async def _purge_airtable(
    access: BaseAccess, postgres: Any, cutoff: datetime, spare: Callable[[], Awaitable[None]]
) -> tuple[int, SinkError | None]:
    """One retention run through the sink's access: how many records it deleted, and why it stopped short."""
    from daemon.sinks.airtable_retention import purge_airtable

    removed = 0

    async def delete(table: str, record_ids: list[str]) -> None:
        nonlocal removed
        await access.delete(table, record_ids)
        removed += len(record_ids)

    try:
        await purge_airtable(access.client, access.names, postgres, cutoff, spare, delete=delete)
    except SinkError as exc:
        return removed, exc
    return removed, None


def _spare(worker: DeliveryWorker, sink: AirtableSink) -> Callable[[], Awaitable[None]]:
    """What retention awaits before each request: deliveries go first."""

    async def spare() -> None:
        """Return once the Airtable worker is not sending and the budget is full. Events pending do not
        count (they may be lingering, or held by a cap only retention lifts)."""
        while worker.sending or not sink.budget_full():
            await asyncio.sleep(SPARE_POLL)

    return spare


def _records_pressure(worker: DeliveryWorker, sink: AirtableSink) -> str | None:
    """Why the base needs room now (blocked at its cap, or at records_high's first share), or None."""
    if worker.state == "blocked":
        return "the base is blocked (at its records cap, or another limit of its plan)"
    held, cap = sink.records, sink.max_records
    if cap and held is not None and held >= RECORDS_WARNING_SHARES[0] * cap:
        return f"the base holds {held:,} of its {cap:,} records"
    return None


class Reconciliation:
    """SendPulse reconciliation as the daemon runs it: at start, then every interval; SIGHUP switches it on
    and off and replaces its client. One reconciler runs at a time (a switched-off one ends its run first)."""

    def __init__(self) -> None:
        self.reconciler: Reconciler | None = None  # None: [sendpulse] is not configured
        self._switched_on = asyncio.Event()

    def status(self) -> SourceStatus:
        """`sources.sendpulse` of the status snapshot."""
        return self.reconciler.status() if self.reconciler is not None else {"state": "disabled"}

    async def run(self) -> None:
        while True:
            reconciler = self.reconciler
            if reconciler is None:  # not configured: idle until SIGHUP switches it on
                await self._switched_on.wait()
                self._switched_on.clear()
                continue
            try:
                await reconciler.run_forever()  # returns once SIGHUP stopped it
            finally:
                if reconciler is not self.reconciler:  # switched off; the running one is closed at stop
                    await reconciler.close()

    def reload(self, settings: SendPulseConfig, journal: Journal, change: str) -> None:
        """Apply a changed [sendpulse] (already set in the running config): names and ids only in the log."""
        if settings.enabled != (self.reconciler is not None):  # also after a reload that failed part way
            change = "on" if settings.enabled else "off"
        if change == "on":
            self.reconciler = Reconciler(settings, journal)
            self._switched_on.set()
            logger.info(
                "SendPulse reconciliation switched on (client_id {}): a first run now, from the newest "
                "journaled event less 10 minutes, as at a start",
                settings.client_id,
            )
        elif change == "off" and self.reconciler is not None:
            self.reconciler.stop()
            self.reconciler = None
            logger.info(
                "SendPulse reconciliation switched off: a run in progress finishes, then nothing is fetched back"
            )
        elif change == "replace" and self.reconciler is not None:
            self.reconciler.use(client_for(settings))
            logger.info(
                "SendPulse client replaced (client_id {}): the next run, now, uses it; a run in progress "
                "finishes with the old one",
                settings.client_id,
            )
        elif change == "retune" and self.reconciler is not None:
            self.reconciler.wake()
            logger.info("SendPulse reconciliation runs now with the new settings")

    async def close(self) -> None:
        if self.reconciler is not None:
            await self.reconciler.close()
