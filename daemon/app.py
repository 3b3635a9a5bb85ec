"""Composition root: builds the journal, HTTP sides and workers, and owns lifecycle and signals."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiohttp import web
from loguru import logger

from daemon import __version__, operations
from daemon.alerts import AlertLimiter, AlertMemory, AlertRules, AlertSender
from daemon.api import ApiStores, add_api
from daemon.backfill import Backfill
from daemon.config import Config, ConfigError, load_config, split_listen
from daemon.delivery import DeliveryWorker
from daemon.health import judge
from daemon.journal import COMMIT_BUCKETS, Journal, JournalUnavailable, Requeue
from daemon.logs import setup_logging
from daemon.operations import postgres_rows
from daemon.ratelimit import MonthlyRequests
from daemon.reload import apply_live, carry_counters, describe, plan_reload, retune_airtable
from daemon.sdnotify import Notifier
from daemon.sinks.airtable import AirtableSink, BaseAccess
from daemon.sinks.airtable_client import AirtableClient
from daemon.sinks.airtable_fields import BaseNames
from daemon.snapshot import SINK_NAMES, JournalCounts, Observed, SinkStatus, Snapshot, WorkerStatus, sink_status
from daemon.status import create_metrics_app, create_status_app, prepare_socket_path, secure_socket
from daemon.webhook import GuardedRunner, create_webhook_app

HTTP_SHUTDOWN_TIMEOUT = 4.0  # in-flight webhooks get this long; the whole stop must fit in 10 s
WORKER_STOP_TIMEOUT = 2.0  # a delivery still running then is cancelled (it is idempotent, it replays)
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

EXIT_OK, EXIT_CRASH = 0, 1


class Daemon:
    """One running chatledger: `await Daemon(config, path).run()` returns the exit code."""

    def __init__(self, config: Config, config_path: Path | None):
        self.config = config
        self.config_path = config_path
        self.notifier = Notifier()
        self.started_monotonic = time.monotonic()
        self.started_at = datetime.now(timezone.utc)
        self.workers: dict[str, DeliveryWorker] = {}
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._successors: dict[str, tuple[DeliveryWorker, asyncio.Future[bool]]] = {}  # SIGHUP's replacements
        self._stopping_workers = False
        self.journal: Journal | None = None
        self.backfill: Backfill | None = None
        self.reconciler: Any = None  # daemon.reconciler.Reconciler when [sendpulse] is configured
        self._sendpulse_on = asyncio.Event()  # SIGHUP switched reconciliation on
        self._stop = asyncio.Event()
        self._hup = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self.purged = 0
        self.monthly: MonthlyRequests | None = None  # the Airtable base's requests this month
        self.alerts = AlertSender(config.alerts.command, config.alerts.webhook_url.get_secret_value())
        self._counts = JournalCounts()

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._hup.set)
        exit_code = EXIT_OK
        try:
            self.journal = await Journal.open(self.config.journal.path, self.config.enabled_sinks)
            self.backfill = Backfill(self.journal, self.config.enabled_sinks)
            if self.config.sendpulse.enabled:
                from daemon.reconciler import Reconciler

                self.reconciler = Reconciler(self.config.sendpulse, self.journal)
            if self.config.airtable.enabled:
                self.monthly = MonthlyRequests.restore(self.config.airtable.monthly_request_limit,
                                                       await self.journal.meta(MonthlyRequests.JOURNAL_KEY))
            webhook_runner = await self._start_webhook()
            status_runner = await self._start_status()
            await self._start_metrics()
            self._start_workers()
            host, port = split_listen(self.config.server.listen)
            logger.info("chatledger {} accepting webhooks on {}:{} at {} (status socket {})",
                        __version__, host, port, self.config.server.webhook_path, self.config.status.socket)
            for warning in self.config.warnings():
                logger.warning(warning)
            self.notifier.ready(f"accepting webhooks; sinks: {', '.join(self.config.enabled_sinks) or 'none'}")
            exit_code = await self._supervise()
            await self._shutdown(webhook_runner, status_runner)
        finally:
            await self._close_leftovers()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        logger.info("chatledger stopped")
        return exit_code

    async def _start_webhook(self) -> web.AppRunner:
        assert self.journal is not None
        app = create_webhook_app(self.config.server, self.journal)

        def airtable() -> tuple[AirtableClient, BaseNames] | None:
            access = self._airtable_access()
            return access.reads() if access else None

        def postgres() -> Any:  # the DSN as it is now (SIGHUP may change it)
            return postgres_rows(self.config, migrate_schema=False)()

        # API reads and checks do not migrate: the PostgreSQL sink does at its connect, and a read
        # should not create tables (before the sink has, a read fails over to the journal)
        add_api(app, self.config.server.api_token.get_secret_value(),
                ApiStores(self.journal, postgres if self.config.postgres.enabled else None, airtable))
        runner = GuardedRunner(app, self.config.server, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runners.append(runner)
        host, port = split_listen(self.config.server.listen)
        await web.TCPSite(runner, host, port).start()  # the runner holds the shutdown timeout
        return runner

    async def _start_status(self) -> web.AppRunner:
        socket_path = self.config.status.socket
        prepare_socket_path(socket_path)
        runner = web.AppRunner(create_status_app(self.snapshot, self.sync, self.replay, self.forget, self.recover,
                                                    self.airtable_setup, discard=self.discard,
                                                    show=self.show,
                                                    quarantine=self.quarantine,
                                                    quarantine_discard=self.discard_quarantined,
                                                    reconcile=self.reconcile), access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.UnixSite(runner, str(socket_path)).start()
        secure_socket(socket_path)
        return runner

    async def _start_metrics(self) -> None:
        """The optional TCP listener for Prometheus ([metrics] listen); the socket always has /metrics."""
        if not self.config.metrics.listen:
            return
        runner = web.AppRunner(create_metrics_app(self.snapshot), access_log=None)
        await runner.setup()
        self._runners.append(runner)
        host, port = split_listen(self.config.metrics.listen)
        await web.TCPSite(runner, host, port).start()
        logger.info("metrics on {}:{} at /metrics", host, port)

    def _start_workers(self) -> None:
        """One delivery worker per enabled sink; each runs on its own, none waits on another."""
        assert self.journal is not None
        for sink in build_sinks(self.config, self.journal, self.monthly):
            self._start_worker(sink)

    def _start_worker(self, sink: Any) -> None:
        assert self.journal is not None
        self.workers[sink.name] = DeliveryWorker(self.journal, sink)
        self._worker_tasks.append(asyncio.create_task(self._deliver(sink.name), name=f"{sink.name}-delivery"))

    async def _deliver(self, name: str) -> None:
        """Run the sink's worker until stop; when SIGHUP replaced it, its successor goes on in this same
        task (so the supervisor sees no task end), once the old sink is closed."""
        while True:
            worker = self.workers[name]
            await worker.run()
            successor, handed_over = self._successors.pop(name, (None, None))
            if successor is None:
                return
            worker.detach()
            if self._stopping_workers:  # the daemon stops: the successor never starts
                successor.detach()
                await _close_sink(successor.sink)
                if not handed_over.done():
                    handed_over.set_result(False)
                return
            carry_counters(worker, successor)
            self.workers[name] = successor  # API reads, recover and forget use the new sink from now on
            await _close_sink(worker.sink)
            if not handed_over.done():  # cancelled when the SIGHUP task was, at a stop
                handed_over.set_result(True)

    async def replace_sink(self, sink: Any) -> bool:
        """Put `sink` in place of the running one of its name: the old worker finishes what it is sending
        (what lingers stays pending for the new one), the old sink is closed, a new worker takes the
        pending deliveries from the journal; nothing is lost or sent twice. False if the daemon stopped
        first."""
        assert self.journal is not None
        if self._stopping_workers:
            await _close_sink(sink)
            return False
        old = self.workers[sink.name]
        handed_over: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._successors[sink.name] = (DeliveryWorker(self.journal, sink), handed_over)
        old.linger_s = 0  # a lingering batch is the new sink's to send, not flushed to the old one
        old.stop()
        return await handed_over

    async def _stop_workers(self) -> None:
        self._stopping_workers = True
        for worker in self.workers.values():
            worker.stop()
        if self._worker_tasks:
            _, late = await asyncio.wait(self._worker_tasks, timeout=WORKER_STOP_TIMEOUT)
            for task in late:
                logger.info("{} was mid-delivery at stop; it is replayed at the next start", task.get_name())
                task.cancel()
            await asyncio.gather(*self._worker_tasks, return_exceptions=True)
            self._worker_tasks.clear()
        for worker in self.workers.values():
            await _close_sink(worker.sink)

    async def _supervise(self) -> int:
        """Wait for a stop signal; a background task that dies stops the daemon loudly."""
        assert self.journal is not None and self.journal.writer_task is not None
        tasks = {
            asyncio.create_task(self._watchdog_loop(), name="watchdog"),
            asyncio.create_task(self._hup_loop(), name="sighup"),
            asyncio.create_task(self._backfill_loop(), name="backfill"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._retention_loop(), name="retention"),
            asyncio.create_task(self._alerts_loop(), name="alerts"),
            asyncio.create_task(self._month_loop(), name="airtable-month"),
            asyncio.create_task(self._airtable_retention_loop(), name="airtable-retention"),
            asyncio.create_task(self.alerts.run(), name="alert-sender"),
            self.journal.writer_task,
            *self._worker_tasks,
        }
        stop_waiter = asyncio.create_task(self._stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait(tasks | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        exit_code = EXIT_OK
        for task in done - {stop_waiter}:
            exit_code = EXIT_CRASH
            error = task.exception() if not task.cancelled() else None
            logger.critical("background task {} ended unexpectedly ({}); stopping so systemd restarts us",
                            task.get_name(), repr(error) if error else "no error")
        stop_waiter.cancel()
        owned_elsewhere = {self.journal.writer_task, *self._worker_tasks}  # stopped in order by _shutdown
        for task in tasks - owned_elsewhere:
            task.cancel()
        await asyncio.gather(*(tasks - owned_elsewhere), stop_waiter, return_exceptions=True)
        return exit_code

    async def _shutdown(self, webhook_runner: web.AppRunner, status_runner: web.AppRunner) -> None:
        """Stop intake, let in-flight commits finish, stop workers, close the journal, drop the socket."""
        logger.info("stopping: no new webhooks, finishing in-flight commits")
        self.notifier.stopping()
        await webhook_runner.cleanup()
        self._runners.remove(webhook_runner)
        await self._stop_workers()
        await self.save_month()
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.journal is not None:
            await self.journal.close()
        await status_runner.cleanup()
        self._runners.remove(status_runner)
        self.config.status.socket.unlink(missing_ok=True)

    async def _close_leftovers(self) -> None:
        """On a failed start or crash: close whatever is still open so the process can exit."""
        for runner in list(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self._stop_workers()
        await self.save_month()
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.journal is not None:
            await self.journal.close()

    # -- background loops ------------------------------------------------------------------------

    async def _watchdog_loop(self) -> None:
        """Ping systemd only while the journal writer answers: a hung writer gets us restarted."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            await asyncio.Event().wait()  # no watchdog configured: idle until cancelled
        assert self.journal is not None and interval is not None
        while True:
            try:
                await asyncio.wait_for(self.journal.ping(), min(WATCHDOG_PING_TIMEOUT, interval))
            except asyncio.TimeoutError:
                logger.error("journal writer did not answer within {:.1f} s; withholding WATCHDOG=1",
                             min(WATCHDOG_PING_TIMEOUT, interval))
            else:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _retention_loop(self) -> None:
        """Purge old, fully delivered events in small batches, a minute after start, then hourly.
        Runs until cancelled at stop (a purge is one short transaction; an interrupted pass resumes)."""
        sinks = list(self.config.enabled_sinks)
        if not self.config.journal.retention_days or not sinks:
            logger.info("journal retention off ({})", "no sink enabled: the journal is the only copy" if not sinks
                        else "retention_days = 0")
            if not sinks:
                await asyncio.Event().wait()
        await asyncio.sleep(RETENTION_FIRST_DELAY)
        while True:
            days = self.config.journal.retention_days  # SIGHUP may change it, to 0 too
            if not days:
                await asyncio.sleep(RETENTION_INTERVAL)
                continue
            cutoff = datetime.now(timezone.utc) - timedelta(days=days)
            purged = 0
            while True:
                try:
                    batch = await self.journal.purge(cutoff, sinks, RETENTION_BATCH)
                except JournalUnavailable as exc:
                    logger.warning("journal retention paused: {}", exc)
                    break
                purged += batch
                if batch < RETENTION_BATCH:
                    break
                await asyncio.sleep(RETENTION_PAUSE)  # intake goes first
            if purged:
                self.purged += purged
                logger.info("journal retention: purged {} events received before {} and delivered to {}",
                            purged, cutoff.isoformat(timespec="seconds"), ", ".join(sinks))
            await asyncio.sleep(RETENTION_INTERVAL)

    async def _alerts_loop(self) -> None:
        """Compare the status every few seconds and raise what changed: sinks down or back, the
        Airtable fallback, new dead letters, an old backlog, the Airtable quota, SendPulse reconciliation
        misconfigured or down for long. What was told is kept
        in the journal: a restart neither repeats it nor leaves a problem that ended meanwhile open.
        Errors here are logged; they never stop the daemon or delivery."""
        assert self.journal is not None
        settings = self.config.alerts
        memory = AlertMemory.loads(await self.journal.meta(AlertMemory.JOURNAL_KEY))
        rules = AlertRules(settings.pending_age_threshold_s, memory)
        limiter = AlertLimiter(settings.min_interval_s, time.monotonic, memory)
        while True:
            await asyncio.sleep(ALERT_CHECK_INTERVAL)
            rules.threshold, limiter.interval = settings.pending_age_threshold_s, settings.min_interval_s  # SIGHUP
            try:
                for alert in limiter.admit(rules.evaluate(await self.snapshot())):
                    self.alerts.submit(alert)
                if memory.dirty:
                    memory.dirty = False
                    await self.journal.set_meta(AlertMemory.JOURNAL_KEY, memory.dumps())
            except JournalUnavailable as exc:
                memory.dirty = True
                logger.warning("what the alerts told is not saved yet: {}", exc)
            except Exception:
                logger.exception("alert check failed")

    async def _airtable_retention_loop(self) -> None:
        """[airtable] retention_days: delete from the base what is older and PostgreSQL holds, on spare budget
        only: daily, and soon once the base is blocked at its cap or near it (never twice within
        AIRTABLE_RETENTION_MIN_GAP). A run that fails is logged and tried again later; one that made room in
        a blocked base lets the held deliveries go at once."""
        if "airtable" not in self.workers or not self.config.postgres.enabled:
            if self.config.airtable.retention_days:
                logger.warning("[airtable] retention_days is set, but nothing is deleted from Airtable: PostgreSQL "
                               "is not configured, so nothing there can be known to be held elsewhere")
            await asyncio.Event().wait()
        from daemon.sinks.airtable_retention import RetentionSchedule, day_start, purge_airtable
        from daemon.sinks.base import SinkError

        schedule = RetentionSchedule(RETENTION_FIRST_DELAY, AIRTABLE_RETENTION_INTERVAL, AIRTABLE_RETENTION_MIN_GAP)
        while True:
            # SIGHUP may change the days (to 0 too), the DSN, and replace the sink
            days, worker, postgres = self.config.airtable.retention_days, self.workers["airtable"], postgres_rows(
                self.config)
            sink = self._airtable()
            if not days or sink is None:
                await asyncio.sleep(RETENTION_PRESSURE_POLL)
                continue
            access = sink.access()
            cutoff = datetime.now(timezone.utc) - timedelta(days=days)
            pressure = _records_pressure(worker, sink)
            if not schedule.due(pressure is not None, day_start(cutoff).date()):
                await asyncio.sleep(RETENTION_PRESSURE_POLL)
                continue
            if pressure:
                logger.info("airtable retention: {}, deleting what is older than {} days now", pressure, days)
            schedule.started(day_start(cutoff).date())
            removed = 0

            async def delete(table: str, record_ids: list[str]) -> None:
                nonlocal removed
                await access.delete(table, record_ids)
                removed += len(record_ids)

            try:
                await purge_airtable(access.client, access.names, postgres, cutoff, self._airtable_spare,
                                     delete=delete)
            except SinkError as exc:
                schedule.finished(ok=False)
                logger.warning("airtable retention stopped, tried again later: {}", exc)
            else:
                schedule.finished(ok=True)
            if removed and worker.state == "blocked":
                logger.info("airtable retention made room for {} records: the held deliveries go now", removed)
                worker.retry_now()

    async def _airtable_spare(self) -> None:
        """Return once the Airtable worker is not sending and the budget is full: deliveries go first. Events
        pending do not count (they may be lingering, or held by a cap only retention lifts)."""
        worker, sink = self.workers["airtable"], self._airtable()
        while worker.sending or (sink is not None and not sink.budget_full()):
            await asyncio.sleep(SPARE_POLL)

    async def _backfill_loop(self) -> None:
        """Make pending what was journaled before a sink was enabled (after READY: readiness never waits
        for it), then rest: a supervised task ends only by failing."""
        if self.backfill is not None:
            await self.backfill.run()
        await asyncio.Event().wait()

    async def _reconcile_loop(self) -> None:
        """Fetch back from SendPulse what the webhooks did not bring: at start, then every interval. SIGHUP
        switches it on and off; one reconciler runs at a time (a switched-off one ends its run first)."""
        while True:
            reconciler = self.reconciler
            if reconciler is None:  # [sendpulse] not configured: idle until SIGHUP switches it on
                await self._sendpulse_on.wait()
                self._sendpulse_on.clear()
                continue
            try:
                await reconciler.run_forever()  # returns once SIGHUP stopped it
            finally:
                await reconciler.close()

    async def _month_loop(self) -> None:
        """Keep the Airtable base's monthly request count in the journal, so a restart does not reset it."""
        while True:
            await asyncio.sleep(MONTH_SAVE_INTERVAL)
            await self.save_month()

    async def save_month(self) -> None:
        if self.monthly is None or not self.monthly.dirty or self.journal is None:
            return
        try:
            await self.journal.set_meta(MonthlyRequests.JOURNAL_KEY, self.monthly.dumps())
        except JournalUnavailable as exc:
            self.monthly.dirty = True
            logger.warning("the Airtable monthly request count is not saved yet: {}", exc)

    async def _hup_loop(self) -> None:
        while True:
            await self._hup.wait()
            self._hup.clear()
            logger.info("SIGHUP: reloading the config and replaying now")
            try:
                await self.reload_settings()
            except Exception:  # noqa: BLE001 - a reload must not stop intake; what failed is logged
                logger.exception("SIGHUP: applying the config failed part way; restart chatledger to apply it whole")
            await self.sync(operator=False)

    async def reload_settings(self) -> None:
        """Read the config file again and apply what can change while running (README, "Reloading"); an
        invalid file changes nothing."""
        try:
            fresh = load_config(self.config_path)
        except ConfigError as exc:
            logger.error("config reload failed, keeping the current settings: {}", exc)
            return
        plan = plan_reload(self.config, fresh)
        warning, applied = describe(plan)
        if warning:
            logger.warning(warning)
        apply_live(self.config, fresh, plan)
        live = {key.name for key in plan.live}
        if {"[log] level", "[log] json"} & live:
            setup_logging(self.config.log.level, self.config.log.json_)
            logger.info("log level {}{}", self.config.log.level, " (JSON lines)" if self.config.log.json_ else "")
        alerts = self.config.alerts
        self.alerts.configure(alerts.command, alerts.webhook_url.get_secret_value())
        if self.monthly is not None:
            self.monthly.limit = self.config.airtable.monthly_request_limit
        self._reload_sendpulse(plan.sendpulse)
        for name in plan.rebuild:
            assert self.journal is not None
            if not await self.replace_sink(build_sink(name, self.config, self.journal, self.monthly)):
                return  # stopping
        airtable = self.workers.get("airtable")
        if airtable is not None and "airtable" not in plan.rebuild:  # a new sink is built with all of them
            retune_airtable(airtable, self.config.airtable, live)
        logger.info(applied)

    def _reload_sendpulse(self, change: str) -> None:
        """Apply a changed [sendpulse] (already set in the running config): names and ids only in the log."""
        from daemon.reconciler import Reconciler, client_for

        assert self.journal is not None
        settings = self.config.sendpulse
        if settings.enabled != (self.reconciler is not None):  # also after a reload that failed part way
            change = "on" if settings.enabled else "off"
        if change == "on":
            self.reconciler = Reconciler(settings, self.journal)
            self._sendpulse_on.set()
            logger.info("SendPulse reconciliation switched on (client_id {}): a first run now, from the newest "
                        "journaled event less 10 minutes, as at a start", settings.client_id)
        elif change == "off":
            self.reconciler.stop()
            self.reconciler = None
            logger.info("SendPulse reconciliation switched off: a run in progress finishes, then nothing is "
                        "fetched back")
        elif change == "replace":
            self.reconciler.use(client_for(settings))
            logger.info("SendPulse client replaced (client_id {}): the next run, now, uses it; a run in progress "
                        "finishes with the old one", settings.client_id)
        elif change == "retune":
            self.reconciler.wake()
            logger.info("SendPulse reconciliation runs now with the new settings")

    async def sync(self, operator: bool = True) -> dict[str, Any]:
        """Wake every sink worker so it replays what is pending now, skipping any backoff; `chatledger sync`
        itself (not SIGHUP) also lifts the monthly request limit and counts the base's records again."""
        airtable = self._airtable()
        if operator and airtable is not None:
            airtable.operator_sync()
            await self.save_month()  # the lift outlives a kill -9
        for worker in self.workers.values():
            worker.wake()
        return {"replay": "triggered", "sinks": sorted(self.workers)}

    async def replay(self, sink: str | None, selection: Requeue | None) -> dict[str, Any]:
        """Re-queue the selected deliveries (if any) of one sink or all, then replay now."""
        assert self.journal is not None
        names = [sink] if sink else sorted(self.workers)
        for name in names:
            if name not in self.workers:
                raise ValueError(f"sink {name!r} is not enabled (enabled: {', '.join(sorted(self.workers)) or 'none'})")
        requeued = (await operations.requeue(self.journal, sorted(self.workers), sink, selection) if selection
                    else dict.fromkeys(names, 0))
        for name in names:
            self.workers[name].wake()
        return {"replay": "triggered", "sinks": names, "requeued": requeued}

    async def discard(self, sink: str | None, event: str | None, reason: str, by: str) -> dict[str, Any]:
        """Give up dead letters (one event's, or all with None) of one sink or every enabled one; a sink no
        longer enabled may be named: its dead letters would otherwise stay open for good."""
        assert self.journal is not None
        return await operations.discard_dead(self.journal, sorted(self.workers), sink, event, reason, by)

    async def forget(self, phone: str, reference: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Erase one phone everywhere (or count what that would erase), through this daemon's journal, workers
        and Airtable budget."""
        assert self.journal is not None

        async def quiesce() -> None:
            for worker in self.workers.values():
                await worker.quiesce()

        return await operations.forget(self.journal, self.config, self._airtable_access(), phone, reference,
                                       dry_run, quiesce=quiesce)

    async def quarantine(self, limit: int, discarded: bool, whole: bool) -> dict[str, Any]:
        """The quarantined elements (`chatledger quarantine`), open or discarded."""
        from daemon.quarantine import list_quarantine

        assert self.journal is not None
        return await list_quarantine(self.journal, limit, discarded=discarded, whole=whole)

    async def discard_quarantined(self, element: int | None, reason: str, by: str) -> dict[str, Any]:
        """Give up one quarantined element (or every open one with None), recorded with who, when and why."""
        assert self.journal is not None
        return await operations.discard_quarantine(self.journal, element, reason, by)

    async def recover(self, selection: Any, options: dict[str, Any], emit: Any) -> dict[str, Any]:
        """`chatledger recover` with this daemon's Airtable client, so that the base's budget is shared;
        `options`: prefer, dry_run, diff."""
        airtable, postgres = self._airtable_access(), postgres_rows(self.config)
        if airtable is None or postgres is None:
            return {"error": "recover needs both [postgres] and [airtable] configured in the running daemon"}
        logger.info("recover ({}) from Airtable, asked over the status socket", selection.describe())
        return await operations.recover(airtable, postgres, selection, options,
                                        progress=lambda report: emit({"progress": report}))

    async def reconcile(self, since: datetime, bot: str | None, emit: Any) -> dict[str, Any]:
        """`chatledger reconcile` with this daemon's SendPulse client and budget, after any run in progress."""
        if self.reconciler is None:
            return {"error": "[sendpulse] is not configured in the running daemon (set client_id and "
                             "client_secret, then reload it: SIGHUP)", "not_configured": True}
        logger.info("reconcile from {} asked over the status socket", since.isoformat(timespec="seconds"))
        return await operations.reconcile(self.reconciler, since, bot, emit)

    async def show(self, conversation: str | None, phone: str | None, limit: int) -> dict[str, Any]:
        """`chatledger show` with this daemon's journal and Airtable client (the base's budget is shared)."""
        assert self.journal is not None
        return await operations.show(self.journal, self.config, self._airtable_access(), conversation, phone, limit)

    async def airtable_setup(self, action: str) -> dict[str, Any]:
        """`chatledger airtable init|check` with this daemon's budget; after init, the sink re-checks
        the base at once (a held delivery resumes without waiting for its backoff)."""
        worker, access = self.workers.get("airtable"), self._airtable_access()
        if worker is None or access is None:
            return {"error": "Airtable is not enabled in the running daemon"}
        result = await operations.airtable_base(access, action)
        if action == "init" and "error" not in result:
            worker.wake()
        return result

    def _airtable(self) -> AirtableSink | None:
        """The running Airtable sink (SIGHUP may have replaced it), or None when Airtable is not enabled."""
        worker = self.workers.get("airtable")
        return worker.sink if worker is not None and isinstance(worker.sink, AirtableSink) else None

    def _airtable_access(self) -> BaseAccess | None:
        """The base as the running Airtable sink reaches it, with its names as they are now."""
        sink = self._airtable()
        return sink.access() if sink is not None else None

    # -- status ----------------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """Everything `chatledger status` shows, as JSON-ready data."""
        assert self.journal is not None
        now = datetime.now(timezone.utc)
        counts, read_error = await self._counts.read(self.journal)
        sinks: dict[str, SinkStatus] = {}
        for name in SINK_NAMES:
            worker = self.workers.get(name)
            live: WorkerStatus | None = None
            if name in self.config.enabled_sinks:
                live = worker.live_status() if worker else {"state": "idle"}
            sinks[name] = sink_status(counts["sinks"].get(name, {}), self.backfill.status(name) if self.backfill
                                      else None, live, now)
        journal_stats = self.journal.stats
        observed: Observed = {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "journal": {
                "path": str(self.journal.path),
                "events": counts["events"],
                "quarantined": counts["quarantined"],
                "quarantine_discarded": counts.get("quarantine_discarded", 0),
                "writable": self.journal.writable,
                "writer_alive": self.journal.writer_alive,
                "commits": journal_stats.commits,
                "committed_events": journal_stats.events,
                "commit_failures": journal_stats.failures,
                "commit_seconds": {"buckets": list(zip(COMMIT_BUCKETS, journal_stats.commit_buckets)),
                                   "over": journal_stats.commit_buckets[-1],
                                   "sum": round(journal_stats.commit_seconds_total, 6)},
                "last_error": journal_stats.last_error,
                "read_error": read_error,
                "retention_days": self.config.journal.retention_days,
                "purged_since_start": self.purged,
            },
            "sinks": sinks,
            "webhook": {"accepted": counts["counters"].get("accepted", 0),
                        "duplicates": counts["counters"].get("duplicates", 0),
                        "rejected": counts["counters"].get("rejected", 0)},
            "alerts": {"enabled": self.alerts.enabled, "sent": self.alerts.sent, "failed": self.alerts.failed},
            "sources": {"sendpulse": self.reconciler.status() if self.reconciler else {"state": "disabled"}},
        }
        return {**observed, "health": judge(observed)}


def build_sinks(config: Config, journal: Journal, monthly: MonthlyRequests | None = None) -> list[Any]:
    """The concrete sink adapters the config enables (the only place that builds them)."""
    return [build_sink(name, config, journal, monthly) for name in config.enabled_sinks]


def build_sink(name: str, config: Config, journal: Journal, monthly: MonthlyRequests | None = None) -> Any:
    """One sink adapter, as the config describes it (at start, and when SIGHUP replaces it)."""
    if name == "postgres":
        from daemon.sinks.postgres import PostgresSink

        return PostgresSink(config.postgres.dsn.get_secret_value(), config.postgres.schema_)
    return AirtableSink.from_config(config.airtable, journal.conversations, monthly,
                                     messages=journal.event_times, reports=journal.reported_statuses)


async def _close_sink(sink: Any) -> None:
    try:
        await sink.close()
    except Exception:
        logger.exception("closing the {} sink failed", sink.name)


def _records_pressure(worker: DeliveryWorker, sink: AirtableSink) -> str | None:
    """Why the base needs room now (blocked at its cap, or at records_high's first share), or None."""
    from daemon.alerts import RECORDS_WARNING_SHARES

    if worker.state == "blocked":
        return "the base is blocked (at its records cap, or another limit of its plan)"
    held, cap = sink.records, sink.max_records
    if cap and held is not None and held >= RECORDS_WARNING_SHARES[0] * cap:
        return f"the base holds {held:,} of its {cap:,} records"
    return None
