"""Composition root: builds the journal, the sinks, the HTTP sides and the loops, and owns the lifecycle.

Start: the journal, then the webhook listener, the status socket and the metrics listener, then a
delivery worker per enabled sink, then READY. Run: every background task is named and supervised;
one that ends stops the daemon loudly (systemd restarts it). Stop, whatever started, in this order:
no new webhooks (in-flight ones finish their commits), the loops, the workers (each sink closed
once), the journal, the status socket. Signal handlers only set state (stop, SIGHUP's reload).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from loguru import logger

from daemon import __version__, loops, operations
from daemon.alerts import AlertSender
from daemon.api import ApiStores, add_api
from daemon.backfill import Backfill
from daemon.config import Config, ConfigError, load_config, split_listen
from daemon.health import judge
from daemon.journal import Journal, Requeue
from daemon.logs import setup_logging
from daemon.operations import Emit, postgres_rows
from daemon.ratelimit import MonthlyRequests
from daemon.reconciler import Reconciler
from daemon.reload import apply_live, describe, plan_reload, retune_airtable
from daemon.sdnotify import Notifier
from daemon.sinks.airtable import AirtableSink, BaseAccess
from daemon.sinks.base import Sink
from daemon.snapshot import (
    SINK_NAMES,
    JournalCounts,
    Observed,
    SinkStatus,
    Snapshot,
    WorkerStatus,
    journal_status,
    sink_status,
    webhook_counts,
)
from daemon.status import create_metrics_app, create_status_app, prepare_socket_path, secure_socket
from daemon.webhook import GuardedRunner, create_webhook_app
from daemon.workers import Workers

if TYPE_CHECKING:
    from daemon.recover import Selection
    from daemon.sinks.airtable_client import AirtableClient
    from daemon.sinks.airtable_fields import BaseNames

HTTP_SHUTDOWN_TIMEOUT = 4.0  # in-flight webhooks get this long; the whole stop must fit in 10 s
EXIT_OK, EXIT_CRASH = 0, 1

# (sink name, the running config, the journal, the Airtable month) -> the sink: build_sink, or a test's fakes
SinkFactory = Callable[[str, Config, Journal, MonthlyRequests | None], Sink]


def build_sink(name: str, config: Config, journal: Journal, monthly: MonthlyRequests | None = None) -> Sink:
    """One sink adapter, as the config describes it (at start, and when SIGHUP replaces it): the only place
    that builds them."""
    if name == "postgres":
        from daemon.sinks.postgres import PostgresSink

        return PostgresSink(config.postgres.dsn.get_secret_value(), config.postgres.schema_)
    return AirtableSink.from_config(
        config.airtable, journal.conversations, monthly, messages=journal.event_times, reports=journal.reported_statuses
    )


class Daemon:
    """One running chatledger: `await Daemon(config, path).run()` returns the exit code."""

    def __init__(self, config: Config, config_path: Path | None, *, make_sink: SinkFactory = build_sink):
        self.config = config
        self.config_path = config_path
        self.make_sink = make_sink
        self.notifier = Notifier()
        self.started_monotonic = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.journal: Journal | None = None  # opened at start
        self.workers = Workers()
        self.backfill: Backfill | None = None
        self.reconciliation = loops.Reconciliation()
        self.retention = loops.JournalRetention(config)
        self.monthly: MonthlyRequests | None = None  # the Airtable base's requests this month
        self.alerts = AlertSender(config.alerts.command, config.alerts.webhook_url.get_secret_value())
        self._counts = JournalCounts()
        self._stop = asyncio.Event()
        self._hup = asyncio.Event()
        self._webhook: web.AppRunner | None = None
        self._status: web.AppRunner | None = None
        self._metrics: web.AppRunner | None = None
        self._loops: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        """Ask for a stop (SIGTERM, SIGINT): `run` goes through the stop sequence and returns."""
        self._stop.set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._hup.set)
        try:
            journal = await self._start()
            exit_code = await self._supervise(journal)
        finally:
            await self._shut_down()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        logger.info("chatledger stopped")
        return exit_code

    async def _start(self) -> Journal:
        journal = self.journal = await Journal.open(self.config.journal.path, self.config.enabled_sinks)
        self.backfill = Backfill(journal, self.config.enabled_sinks)
        if self.config.sendpulse.enabled:
            self.reconciliation.reconciler = Reconciler(self.config.sendpulse, journal)
        if self.config.airtable.enabled:
            self.monthly = MonthlyRequests.restore(
                self.config.airtable.monthly_request_limit, await journal.meta(MonthlyRequests.JOURNAL_KEY)
            )
        self._webhook = await self._start_webhook(journal)
        self._status = await self._start_status()
        self._metrics = await self._start_metrics()
        for name in self.config.enabled_sinks:  # each delivers on its own, none waits on another
            self.workers.start(journal, self.make_sink(name, self.config, journal, self.monthly))
        host, port = split_listen(self.config.server.listen)
        logger.info(
            "chatledger {} accepting webhooks on {}:{} at {} (status socket {})",
            __version__,
            host,
            port,
            self.config.server.webhook_path,
            self.config.status.socket,
        )
        for warning in self.config.warnings():
            logger.warning(warning)
        self.notifier.ready(f"accepting webhooks; sinks: {', '.join(self.config.enabled_sinks) or 'none'}")
        return journal

    async def _start_webhook(self, journal: Journal) -> web.AppRunner:
        app = create_webhook_app(self.config.server, journal)

        def airtable() -> tuple[AirtableClient, BaseNames] | None:
            access = self._airtable_access()
            return access.reads() if access else None

        def postgres() -> Any:  # the DSN as it is now (SIGHUP may change it)
            return postgres_rows(self.config, migrate_schema=False)()

        # API reads and checks do not migrate: the PostgreSQL sink does at its connect, and a read
        # should not create tables (before the sink has, a read fails over to the journal)
        add_api(
            app,
            self.config.server.api_token.get_secret_value(),
            ApiStores(journal, postgres if self.config.postgres.enabled else None, airtable),
        )
        runner = GuardedRunner(app, self.config.server, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT)
        await runner.setup()
        host, port = split_listen(self.config.server.listen)
        await web.TCPSite(runner, host, port).start()  # the runner holds the shutdown timeout
        return runner

    async def _start_status(self) -> web.AppRunner:
        socket_path = self.config.status.socket
        prepare_socket_path(socket_path)
        runner = web.AppRunner(
            create_status_app(
                self.snapshot,
                self.sync,
                self.replay,
                self.forget,
                self.recover,
                self.airtable_setup,
                discard=self.discard,
                show=self.show,
                quarantine=self.quarantine,
                quarantine_discard=self.discard_quarantined,
                reconcile=self.reconcile,
            ),
            access_log=None,
        )
        await runner.setup()
        await web.UnixSite(runner, str(socket_path)).start()
        secure_socket(socket_path)
        return runner

    async def _start_metrics(self) -> web.AppRunner | None:
        """The optional TCP listener for Prometheus ([metrics] listen); the socket always has /metrics."""
        if not self.config.metrics.listen:
            return None
        runner = web.AppRunner(create_metrics_app(self.snapshot), access_log=None)
        await runner.setup()
        host, port = split_listen(self.config.metrics.listen)
        await web.TCPSite(runner, host, port).start()
        logger.info("metrics on {}:{} at /metrics", host, port)
        return runner

    def _background(self, journal: Journal) -> dict[str, Coroutine[Any, Any, None]]:
        """The loops the daemon supervises, by task name."""
        return {
            "watchdog": loops.watchdog(self.notifier, journal),
            "sighup": self._hup_loop(),
            "backfill": loops.backfill(self.backfill) if self.backfill else loops.idle(),
            "reconcile": self.reconciliation.run(),
            "retention": self.retention.run(journal),
            "alerts": loops.alerts(journal, self.config.alerts, self.alerts, self.snapshot),
            "airtable-month": loops.month(journal, self.monthly),
            "airtable-retention": loops.airtable_retention(self.config, self.workers),
            "alert-sender": self.alerts.run(),
        }

    async def _supervise(self, journal: Journal) -> int:
        """Wait for a stop; a background task that ends (the journal's writer and the delivery workers
        included) stops the daemon loudly."""
        assert journal.writer_task is not None
        self._loops = {
            asyncio.create_task(coroutine, name=name) for name, coroutine in self._background(journal).items()
        }
        watched = {*self._loops, journal.writer_task, *self.workers.tasks}
        stop_waiter = asyncio.create_task(self._stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait(watched | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        stop_waiter.cancel()
        await asyncio.gather(stop_waiter, return_exceptions=True)
        exit_code = EXIT_OK
        for task in done - {stop_waiter}:
            exit_code = EXIT_CRASH
            error = task.exception() if not task.cancelled() else None
            logger.critical(
                "background task {} ended unexpectedly ({}); stopping so systemd restarts us",
                task.get_name(),
                repr(error) if error else "no error",
            )
        return exit_code

    async def _shut_down(self) -> None:
        """The stop sequence, once, over whatever started (all of it, or what a failed start left open)."""
        if self._webhook is not None:
            logger.info("stopping: no new webhooks, finishing in-flight commits")
            self.notifier.stopping()
            await self._webhook.cleanup()  # in-flight webhooks answer once their events are committed
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.workers.stop()
        await self.reconciliation.close()
        if self.journal is not None:
            await loops.save_month(self.journal, self.monthly)
            await self.journal.close()
        for runner in (self._status, self._metrics):
            if runner is not None:
                await runner.cleanup()
        if self._status is not None:  # ours: a socket found in place at start is another daemon's
            self.config.status.socket.unlink(missing_ok=True)

    # -- SIGHUP ----------------------------------------------------------------------------------

    async def _hup_loop(self) -> None:
        while True:
            await self._hup.wait()
            self._hup.clear()
            logger.info("SIGHUP: reloading the config and replaying now")
            try:
                await self.reload_settings()
            except Exception:
                logger.exception("SIGHUP: applying the config failed part way; restart chatledger to apply it whole")
            await self.sync(operator=False)

    async def reload_settings(self) -> None:
        """Read the config file again and apply what can change while running (README, "Reloading"); an
        invalid file changes nothing."""
        assert self.journal is not None
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
        self.reconciliation.reload(self.config.sendpulse, self.journal, plan.sendpulse)
        for name in plan.rebuild:
            if not await self.workers.replace(self.make_sink(name, self.config, self.journal, self.monthly)):
                return  # stopping
        airtable = self.workers.get("airtable")
        if airtable is not None and "airtable" not in plan.rebuild:  # a new sink is built with all of them
            retune_airtable(airtable, self.config.airtable, live)
        logger.info(applied)

    # -- what the status socket asks -------------------------------------------------------------

    async def sync(self, operator: bool = True) -> dict[str, Any]:
        """Wake every sink worker so it replays what is pending now, skipping any backoff; `chatledger sync`
        itself (not SIGHUP) also lifts the monthly request limit and counts the base's records again."""
        airtable = self.workers.sink_of("airtable", AirtableSink)
        if operator and airtable is not None and self.journal is not None:
            airtable.operator_sync()
            await loops.save_month(self.journal, self.monthly)  # the lift outlives a kill -9
        self.workers.wake()
        return {"replay": "triggered", "sinks": sorted(self.workers)}

    async def replay(self, sink: str | None, selection: Requeue | None) -> dict[str, Any]:
        """Re-queue the selected deliveries (if any) of one sink or all, then replay now."""
        names = [sink] if sink else sorted(self.workers)
        for name in names:
            if name not in self.workers:
                raise ValueError(f"sink {name!r} is not enabled (enabled: {', '.join(sorted(self.workers)) or 'none'})")
        requeued = (
            await operations.requeue(self._journal, sorted(self.workers), sink, selection)
            if selection
            else dict.fromkeys(names, 0)
        )
        for name in names:
            self.workers[name].wake()
        return {"replay": "triggered", "sinks": names, "requeued": requeued}

    async def discard(self, sink: str | None, event: str | None, reason: str, by: str) -> dict[str, Any]:
        """Give up dead letters (one event's, or all with None) of one sink or every enabled one; a sink no
        longer enabled may be named: its dead letters would otherwise stay open for good."""
        return await operations.discard_dead(self._journal, sorted(self.workers), sink, event, reason, by)

    async def forget(self, phone: str, reference: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Erase one phone everywhere (or count what that would erase), through this daemon's journal, workers
        and Airtable budget."""
        return await operations.forget(
            self._journal, self.config, self._airtable_access(), phone, reference, dry_run, quiesce=self.workers.quiesce
        )

    async def quarantine(self, limit: int, discarded: bool, whole: bool) -> dict[str, Any]:
        """The quarantined elements (`chatledger quarantine`), open or discarded."""
        from daemon.quarantine import list_quarantine

        return await list_quarantine(self._journal, limit, discarded=discarded, whole=whole)

    async def discard_quarantined(self, element: int | None, reason: str, by: str) -> dict[str, Any]:
        """Give up one quarantined element (or every open one with None), recorded with who, when and why."""
        return await operations.discard_quarantine(self._journal, element, reason, by)

    async def recover(self, selection: Selection, options: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """`chatledger recover` with this daemon's Airtable client, so that the base's budget is shared;
        `options`: prefer, dry_run, diff."""
        airtable, postgres = self._airtable_access(), postgres_rows(self.config)
        if airtable is None or postgres is None:
            return {"error": "recover needs both [postgres] and [airtable] configured in the running daemon"}
        logger.info("recover ({}) from Airtable, asked over the status socket", selection.describe())
        return await operations.recover(
            airtable, postgres, selection, options, progress=lambda report: emit({"progress": report})
        )

    async def reconcile(self, since: datetime, bot: str | None, emit: Emit) -> dict[str, Any]:
        """`chatledger reconcile` with this daemon's SendPulse client and budget, after any run in progress."""
        reconciler = self.reconciliation.reconciler
        if reconciler is None:
            return {
                "error": "[sendpulse] is not configured in the running daemon (set client_id and "
                "client_secret, then reload it: SIGHUP)",
                "not_configured": True,
            }
        logger.info("reconcile from {} asked over the status socket", since.isoformat(timespec="seconds"))
        return await operations.reconcile(reconciler, since, bot, emit)

    async def show(self, conversation: str | None, phone: str | None, limit: int) -> dict[str, Any]:
        """`chatledger show` with this daemon's journal and Airtable client (the base's budget is shared)."""
        return await operations.show(self._journal, self.config, self._airtable_access(), conversation, phone, limit)

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

    @property
    def _journal(self) -> Journal:
        assert self.journal is not None, "the status socket opens after the journal"
        return self.journal

    def _airtable_access(self) -> BaseAccess | None:
        """The base as the running Airtable sink reaches it (SIGHUP may have replaced it), or None when
        Airtable is not enabled."""
        sink = self.workers.sink_of("airtable", AirtableSink)
        return sink.access() if sink is not None else None

    # -- status ----------------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """Everything `chatledger status` shows, as JSON-ready data."""
        journal = self._journal
        now = datetime.now(UTC)
        counts, read_error = await self._counts.read(journal)
        sinks: dict[str, SinkStatus] = {}
        for name in SINK_NAMES:
            worker = self.workers.get(name)
            live: WorkerStatus | None = None
            if name in self.config.enabled_sinks:
                live = worker.live_status() if worker else {"state": "idle"}
            backfill = self.backfill.status(name) if self.backfill else None
            sinks[name] = sink_status(counts["sinks"].get(name, {}), backfill, live, now)
        observed: Observed = {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "journal": journal_status(
                journal, counts, read_error, self.config.journal.retention_days, self.retention.purged
            ),
            "sinks": sinks,
            "webhook": webhook_counts(counts),
            "alerts": {"enabled": self.alerts.enabled, "sent": self.alerts.sent, "failed": self.alerts.failed},
            "sources": {"sendpulse": self.reconciliation.status()},
        }
        return {**observed, "health": judge(observed)}
