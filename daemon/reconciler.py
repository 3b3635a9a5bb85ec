"""The daemon's reconciliation: at start over the time it was down, then every interval, and on demand.

One SendPulse client and request budget for all of them; runs never overlap. A failing run is logged
and retried later; it never stops the daemon. SIGHUP may replace the client, change the settings
(read at each run) and wake the loop, or stop it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from loguru import logger

from daemon.config import SendPulseConfig
from daemon.journal import Journal
from daemon.ratelimit import RequestBudget
from daemon.reconcile import Report, reconcile
from daemon.records import iso
from daemon.sendpulse import SendPulseClient, parse_time
from daemon.snapshot import SourceStatus

# A webhook journaled just before a stop may be newer than messages SendPulse failed to post around it,
# and the two clocks differ: each window starts this much earlier than where the last one began.
MARGIN = timedelta(minutes=10)
RETRY_S = 300.0  # a failed run is tried again this soon when no interval is set
NEWEST_EVENT = "SELECT received_at FROM events ORDER BY id DESC LIMIT 1"


def client_for(settings: SendPulseConfig) -> SendPulseClient:
    """The account's client, its budget empty at first: a replaced client may just have spent its second."""
    return SendPulseClient(
        settings.api_url,
        settings.client_id,
        settings.client_secret.get_secret_value(),
        RequestBudget(settings.requests_per_second, start_empty=True),
    )


class Reconciler:
    """Runs `reconcile` for the daemon and keeps what `status` says of SendPulse."""

    def __init__(self, settings: SendPulseConfig, journal: Journal, client: SendPulseClient | None = None):
        self.settings = settings
        self.journal = journal
        self.client = client or client_for(settings)
        self.budget = self.client.budget
        self._lock = asyncio.Lock()
        self.state = "starting"
        self.running = False
        self.last: Report | None = None
        self.last_run_at: datetime | None = None
        self.last_reconciled_at: datetime | None = None  # the end of the last window read whole
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.runs = self.failures = self.added_total = self.seen_total = self.statuses_total = 0
        self.failed_in_a_row = 0  # alerts and health tell SendPulse down once this lasts
        self.failing_since: datetime | None = None  # the start of the first of them
        self._logged_error: str | None = None
        self._wake = asyncio.Event()
        self._stopped = False
        self._retiring: list[SendPulseClient] = []  # replaced, still finishing the run in progress
        self._retired_requests = 0  # what replaced clients sent: status counts since start

    async def close(self) -> None:
        for client in (*self._retiring, self.client):
            await client.close()

    def wake(self) -> None:
        """Run now, or right after the run in progress (SIGHUP changed [sendpulse])."""
        self._wake.set()

    def stop(self) -> None:
        """End `run_forever` once the run in progress is done (SIGHUP switched reconciliation off)."""
        self._stopped = True
        self._wake.set()

    def use(self, client: SendPulseClient) -> None:
        """Put `client` in place of the running one: a run in progress finishes with the old one, closed at
        the next run, which uses `client` and comes at once. The counters go on."""
        self._retiring.append(self.client)
        self.client, self.budget = client, client.budget
        self.wake()

    async def run_forever(self) -> None:
        """At start, from the newest journaled event (less the margin); then each interval from the last
        window's start (less the margin), until `stop`. A failed window is read again whole at the next try."""
        since = await self._start_since()
        while not self._stopped:
            self._wake.clear()  # a wake from now on asks for another run after this one
            started = datetime.now(UTC)
            report = await self.run(since)
            if report.error is None:
                since = started - MARGIN
            elif since < started - timedelta(days=7):
                since = started - timedelta(days=7)  # a long outage must not grow the window for ever
            interval = self.settings.reconcile_interval_s  # SIGHUP may change it
            # 0: on demand from now on, or after a failure in RETRY_S
            await self._pause(None if report.error is None and not interval else interval or RETRY_S)

    async def _pause(self, seconds: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _start_since(self) -> datetime:
        try:
            rows = await self.journal.query(NEWEST_EVENT)
        except Exception as exc:
            logger.warning(
                "reconciliation cannot read the journal's newest event ({}): it reads the last {} h",
                exc,
                self.settings.first_window_h,
            )
            rows = []
        newest = parse_time(rows[0][0]) if rows else None
        if newest is None:
            return datetime.now(UTC) - timedelta(hours=self.settings.first_window_h)
        return newest - MARGIN

    async def run(
        self, since: datetime, bot_ids: Sequence[str] | None = None, progress: Callable[[Report], None] | None = None
    ) -> Report:
        """One reconciliation (after any run in progress), its outcome kept for status."""
        async with self._lock:
            await self._retire()
            self.running = True
            self.last_run_at = datetime.now(UTC)
            try:
                follow_up = self.settings.status_window_h
                report = await reconcile(
                    self.client,
                    self.journal,
                    since,
                    bot_ids=self.settings.bot_ids if bot_ids is None else bot_ids,
                    progress=progress,
                    follow_up_since=self.last_run_at - timedelta(hours=follow_up) if follow_up else None,
                )
            except Exception as exc:
                logger.opt(exception=exc).debug("reconciliation broke off")
                report = Report(
                    since=since, until=datetime.now(UTC), state="down", error=f"{type(exc).__name__}: {exc}"
                )
            finally:
                self.running = False
            self._record(report)
            return report

    async def _retire(self) -> None:
        """Close the clients replaced since the last run: runs never overlap, so none is in use."""
        while self._retiring:
            old = self._retiring.pop()
            self._retired_requests += old.requests
            await old.close()

    def _record(self, report: Report) -> None:
        self.last = report
        self.runs += 1
        self.added_total += report.added
        self.seen_total += report.seen
        self.statuses_total += report.statuses
        if report.error is None:
            self.state = "up"
            self.failed_in_a_row, self.failing_since = 0, None
            self.last_reconciled_at = report.until
            if self._logged_error is not None:
                logger.info("SendPulse reconciliation works again")
            self._logged_error = None
            if report.added:
                logger.info(
                    "reconciliation {} to {}: {} message(s) the webhooks did not bring journaled",
                    iso(report.since),
                    iso(report.until),
                    report.added,
                )
            return
        self.failures += 1
        self.failed_in_a_row += 1
        self.failing_since = self.failing_since or self.last_run_at
        self.state = "misconfigured" if report.state in ("misconfigured", "error") else "down"
        self.last_error, self.last_error_at = report.error, datetime.now(UTC)
        retry = f"retried in {self.settings.reconcile_interval_s or RETRY_S:.0f} s"
        if self.state == "misconfigured":
            if report.error != self._logged_error:  # an operator must act; once per distinct error is enough
                logger.error(
                    "SendPulse reconciliation is misconfigured: {}; {} (intake and delivery go on)", report.error, retry
                )
        else:
            logger.warning("SendPulse reconciliation failed ({}): {}; {}", self.state, report.error, retry)
        self._logged_error = report.error

    def status(self) -> SourceStatus:
        """`sources.sendpulse` of the status snapshot."""
        report = self.last
        return {
            "state": self.state,
            "running": self.running,
            "interval_s": self.settings.reconcile_interval_s,
            "last_run_at": iso(self.last_run_at) if self.last_run_at else None,
            "last_reconciled_at": iso(self.last_reconciled_at) if self.last_reconciled_at else None,
            "window": {"since": iso(report.since), "until": iso(report.until)} if report else None,
            "seen": report.seen if report else 0,
            "added": report.added if report else 0,
            "present": report.present if report else 0,
            "statuses": report.statuses if report else 0,
            "followed_up": report.followed_up if report else 0,
            "runs": self.runs,
            "failed_runs": self.failures,
            "failed_in_a_row": self.failed_in_a_row,
            "failing_since": iso(self.failing_since) if self.failing_since else None,
            "added_total": self.added_total,
            "seen_total": self.seen_total,
            "statuses_total": self.statuses_total,
            "requests_total": self._retired_requests + sum(c.requests for c in (*self._retiring, self.client)),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at) if self.last_error_at else None,
        }
