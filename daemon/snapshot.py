"""The status snapshot, typed key by key: what `chatledger status --json` prints (a public contract), and
what the readable status, `top`, `/metrics`, the alerts and the health verdict read.

The daemon builds it (Daemon.snapshot, with the pieces below); the commands read it back from the
status socket, from a daemon that may be older than they are, so they take each key with .get.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Required, TypedDict

from loguru import logger

from daemon.journal import COMMIT_BUCKETS

if TYPE_CHECKING:
    from daemon.journal import Journal

SINK_NAMES = ("postgres", "airtable")  # each has an entry, "disabled" when not enabled


class CommitSeconds(TypedDict):
    """The journal's commit latency: commits per bucket (its upper bound in seconds), over the last, the sum."""

    buckets: list[tuple[float, int]]
    over: int
    sum: float


class JournalStatus(TypedDict):
    path: str
    events: int
    quarantined: int
    quarantine_discarded: int
    writable: bool
    writer_alive: bool
    commits: int
    committed_events: int
    commit_failures: int
    commit_seconds: CommitSeconds
    last_error: str | None
    read_error: str | None  # why the counts could not be read now (they are the last read)
    retention_days: int
    purged_since_start: int


class BackfillStatus(TypedDict):
    """Events journaled before a sink was enabled, made pending at start (daemon.backfill)."""

    state: str  # waiting, running, done
    total: int | None  # None until counted
    done: int
    to_go: int | None


class SinkStats(TypedDict, total=False):
    """What a sink adds to its entry (SinkDefaults.stats): Airtable's request budget, month and records."""

    requests_last_minute: int
    requests_total: int
    rate_limited_429: int
    tokens_left: int
    requests_per_window: int
    paused_until: str | None
    paused_for_s: float | None
    pause_reason: str | None
    requests_this_month: int  # these four with [airtable] monthly counting (always, in the daemon)
    monthly_request_limit: int | None
    requests_month_forecast: int
    month: str
    warnings: list[str]
    records: int | None  # these two with [airtable] max_records; None until counted
    max_records: int


class WorkerStatus(SinkStats, total=False):
    """An enabled sink as its delivery worker sees it (DeliveryWorker.live_status)."""

    state: Required[str]
    last_error: str | None
    last_error_at: str | None
    last_delivery_at: str | None
    consecutive_failures: int
    delivered_since_start: int
    dead_since_start: int
    failed_attempts_since_start: int
    retry_in_s: float  # while a retry is scheduled


class SinkStatus(WorkerStatus, total=False):
    """A sink's entry: the journal's counts (every sink, a disabled one too), then what its worker reports."""

    pending: Required[int]
    delivered: Required[int]
    dead: Required[int]
    dead_last_at: Required[str | None]  # when the latest open dead letter died
    discarded: Required[int]
    oldest_pending_at: Required[str | None]
    oldest_pending_age_s: Required[float | None]
    backfill: Required[BackfillStatus | None]


class WebhookCounts(TypedDict):
    accepted: int
    duplicates: int
    rejected: int


class AlertsStatus(TypedDict):
    enabled: bool
    sent: int
    failed: int


class SourceWindow(TypedDict):
    since: str
    until: str


class SourceStatus(TypedDict, total=False):
    """SendPulse reconciliation (Reconciler.status); when it is off, {"state": "disabled"} alone."""

    state: Required[str]
    running: bool
    interval_s: float
    last_run_at: str | None
    last_reconciled_at: str | None  # the end of the last window read whole
    window: SourceWindow | None  # the last run's
    seen: int
    added: int
    present: int
    statuses: int
    followed_up: int
    runs: int
    failed_runs: int
    failed_in_a_row: int
    failing_since: str | None
    added_total: int
    seen_total: int
    statuses_total: int
    requests_total: int
    last_error: str | None
    last_error_at: str | None


class Sources(TypedDict):
    sendpulse: SourceStatus


class Health(TypedDict):
    status: str  # healthy, degraded
    problems: list[str]


class Observed(TypedDict):
    """The snapshot but its health, which is judged from the rest (daemon.health)."""

    version: str
    pid: int
    started_at: str
    uptime_s: float
    journal: JournalStatus
    sinks: dict[str, SinkStatus]
    webhook: WebhookCounts
    alerts: AlertsStatus
    sources: Sources


class Snapshot(Observed):
    """Everything `chatledger status` shows."""

    health: Health


def sink_status(
    counts: Mapping[str, Any], backfill: BackfillStatus | None, live: WorkerStatus | None, now: datetime
) -> SinkStatus:
    """A sink's entry from the journal's counts for it and, when it is enabled, its worker's status."""
    oldest = counts.get("oldest_pending_at")
    entry: SinkStatus = {
        "state": "disabled",
        "pending": counts.get("pending", 0),
        "delivered": counts.get("delivered", 0),
        "dead": counts.get("dead", 0),
        "dead_last_at": counts.get("dead_last_at"),
        "discarded": counts.get("discarded", 0),
        "oldest_pending_at": oldest,
        "oldest_pending_age_s": age_seconds(oldest, now),
        "backfill": backfill,
    }
    return entry if live is None else {**entry, **live}  # the worker's state in the place of "disabled"


def journal_status(
    journal: Journal, counts: Mapping[str, Any], read_error: str | None, retention_days: int, purged: int
) -> JournalStatus:
    """The journal's entry: its counts (`counts`, as JournalCounts read them), its writer's figures, retention."""
    stats = journal.stats
    return {
        "path": str(journal.path),
        "events": counts["events"],
        "quarantined": counts["quarantined"],
        "quarantine_discarded": counts.get("quarantine_discarded", 0),
        "writable": journal.writable,
        "writer_alive": journal.writer_alive,
        "commits": stats.commits,
        "committed_events": stats.events,
        "commit_failures": stats.failures,
        "commit_seconds": {
            "buckets": list(zip(COMMIT_BUCKETS, stats.commit_buckets)),
            "over": stats.commit_buckets[-1],
            "sum": round(stats.commit_seconds_total, 6),
        },
        "last_error": stats.last_error,
        "read_error": read_error,
        "retention_days": retention_days,
        "purged_since_start": purged,
    }


def webhook_counts(counts: Mapping[str, Any]) -> WebhookCounts:
    """The webhook's counters, which the journal keeps across restarts."""
    counters = counts["counters"]
    return {
        "accepted": counters.get("accepted", 0),
        "duplicates": counters.get("duplicates", 0),
        "rejected": counters.get("rejected", 0),
    }


def age_seconds(stamp: str | None, now: datetime) -> float | None:
    if not stamp:
        return None
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return round(max(0.0, (now - moment).total_seconds()), 1)


class JournalCounts:
    """The journal's counts for status, or the last ones read and why they could not be read now (a page
    damaged while running): status must still answer, and say so."""

    def __init__(self) -> None:
        self._last: dict[str, Any] = {"events": 0, "quarantined": 0, "counters": {}, "sinks": {}}
        self._error: str | None = None

    async def read(self, journal: Journal) -> tuple[dict[str, Any], str | None]:
        try:
            self._last = await journal.counts()
        except sqlite3.Error as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if reason != self._error:
                logger.error(
                    'journal {} cannot be read ({}); see README, "When the journal is damaged"', journal.path, reason
                )
            self._error = reason
            return self._last, reason
        self._error = None
        return self._last, None
