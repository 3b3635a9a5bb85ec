"""Alerts: what changed for the worse (or better) between two status snapshots, rate-limited, sent to
an operator's command (JSON on stdin) and/or a webhook (JSON POST), never in the delivery's way.

The rules are pure (snapshots in, alerts out) and the limiter runs on an injected clock; only
`AlertSender` does I/O, from its own task and queue, with a timeout on each send.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from loguru import logger

from daemon.logs import safe_url
from daemon.ratelimit import MONTH_WARNING_SHARE, MONTHLY_LIMIT_REASON
from daemon.snapshot import SinkStats, Snapshot, SourceStatus

RECORDS_WARNING_SHARES = (0.8, 0.95)
DOWN_STATES = frozenset({"down", "misconfigured", "blocked"})
# A failed reconciliation's window is read again whole at the next run: SendPulse down loses nothing until
# the retry fails too, and one failed run is as likely a blip (a 5xx, a burst of 429s) as an outage.
SOURCE_DOWN_RUNS = 2
QUEUE_SIZE = 100
SEND_TIMEOUT = 10.0
# A problem that ends says so, at once: its recovery shares its key and is never held by the limiter. Told,
# a problem stays open (AlertMemory) until its recovery is sent.
PROBLEMS = {
    "sink_down": "sink_up",
    "fallback_active": "fallback_ended",
    "quota_exhausted": "quota_ended",
    "backlog_old": "backlog_cleared",
    "source_misconfigured": "source_up",
    "source_down": "source_up",
}
RECOVERIES = frozenset(PROBLEMS.values())
FAMILIES = {
    "sink_down": "sink_state",
    "sink_up": "sink_state",
    "fallback_active": "fallback",
    "fallback_ended": "fallback",
    "quota_ended": "quota_exhausted",
    "backlog_cleared": "backlog_old",
    "source_misconfigured": "source_state",
    "source_down": "source_state",
    "source_up": "source_state",
}


def source_trouble(source: SourceStatus | None) -> str | None:
    """What an operator must hear of SendPulse reconciliation: `misconfigured` at once, `down` once it lasted."""
    if source is None:
        return None
    state = source.get("state")
    if state == "misconfigured":
        return state
    if state == "down" and source.get("failed_in_a_row", 0) >= SOURCE_DOWN_RUNS:
        return state
    return None


def source_problem(source: SourceStatus | None) -> str | None:
    """The trouble of `source_trouble` in words, with what to do (the health problem, the alert's message)."""
    trouble = source_trouble(source)
    if trouble is None:
        return None
    assert source is not None
    error = source.get("last_error") or "?"
    if trouble == "misconfigured":  # worded unlike the reconciler's own log line, which is logged once
        return (
            f"SendPulse reconciliation misconfigured: {error}; check [sendpulse] client_id, client_secret and "
            "bot_ids, then SIGHUP (webhooks are still journaled and delivered; nothing SendPulse failed to post "
            "is fetched back until then)"
        )
    return (
        f"SendPulse is down ({source.get('failed_in_a_row')} runs in a row since "
        f"{source.get('failing_since') or '?'}): {error}; retried, and what SendPulse fails to post meanwhile is "
        "fetched back once it answers"
    )


@dataclass(frozen=True)
class Alert:
    kind: str  # sink_down, sink_up, fallback_active, fallback_ended, dead_letters, backlog_old, backlog_cleared,
    #            quota_exhausted, quota_ended, monthly_requests_high, airtable_warnings, records_high,
    #            source_misconfigured, source_down, source_up
    severity: str  # critical, warning, info
    message: str
    sink: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str | None]:
        """Alerts about the same thing share a key: the limiter keeps only the latest of them."""
        return FAMILIES.get(self.kind, self.kind), self.sink

    def payload(self, at: datetime) -> dict[str, Any]:
        return {
            **asdict(self),
            "at": at.isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "service": "chatledger",
        }


@dataclass
class AlertMemory:
    """What the operator was told, kept in the journal so that a restart neither repeats it nor leaves it
    open: the problems told and not yet over (by key), and per sink when the latest dead letter told died."""

    JOURNAL_KEY: ClassVar[str] = "alerts"
    open: dict[tuple[str, str | None], dict[str, Any]] = field(default_factory=dict)
    dead_told: dict[str, str] = field(default_factory=dict)
    dirty: bool = False

    def note(self, alert: Alert) -> None:
        """Remember an alert that was sent."""
        if alert.kind in RECOVERIES:
            self.dirty |= self.open.pop(alert.key, None) is not None
        elif alert.kind in PROBLEMS:
            self.open[alert.key] = {"kind": alert.kind, "sink": alert.sink}
            self.dirty = True
        elif alert.kind == "dead_letters" and alert.sink and alert.details.get("dead_last_at"):
            self.dead_told[alert.sink] = max(self.dead_told.get(alert.sink, ""), alert.details["dead_last_at"])
            self.dirty = True

    def dumps(self) -> str:
        return json.dumps({"open": list(self.open.values()), "dead_told": self.dead_told}, sort_keys=True)

    @classmethod
    def loads(cls, text: str | None) -> AlertMemory:
        """What an earlier run kept; anything unreadable is forgotten (at worst an alert is told again)."""
        memory = cls()
        try:
            kept = json.loads(text) if text else {}
            for entry in kept.get("open", []):
                problem = Alert(str(entry["kind"]), "", "", entry.get("sink"))
                if problem.kind in PROBLEMS:
                    memory.open[problem.key] = {"kind": problem.kind, "sink": problem.sink}
            memory.dead_told = {str(sink): str(at) for sink, at in kept.get("dead_told", {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning("alerts: what earlier runs told cannot be read ({}); starting afresh", exc)
            return cls()
        return memory


class AlertRules:
    """Compares each snapshot with the previous one; the first snapshot only sets the baseline
    (except for conditions already true, which alert once, unless `memory` says they were told before
    a restart: those are resolved once the state is known)."""

    def __init__(self, pending_age_threshold_s: float, memory: AlertMemory | None = None):
        self.threshold = pending_age_threshold_s
        self._down: set[str] = set()  # sinks told down and not yet told up (a 429 in between changes neither)
        self._dead_seen: dict[str, str] = dict(memory.dead_told) if memory else {}
        self._old: set[str] = set()
        self._fallback = False
        self._quota = False
        self._source: str | None = None  # the SendPulse trouble told and not over yet: misconfigured or down
        for problem in memory.open.values() if memory else ():
            if problem["kind"] == "sink_down" and problem["sink"]:
                self._down.add(problem["sink"])
            elif problem["kind"] == "backlog_old" and problem["sink"]:
                self._old.add(problem["sink"])
            elif problem["kind"] == "fallback_active":
                self._fallback = True
            elif problem["kind"] == "quota_exhausted":
                self._quota = True
            elif problem["kind"] in ("source_misconfigured", "source_down"):
                self._source = problem["kind"].removeprefix("source_")
        self._month_warned: str | None = None  # the month the 80 % alert was sent for
        self._records_share = 0.0  # the highest of RECORDS_WARNING_SHARES the base's records reached
        self._warned: set[frozenset[str]] = set()  # each set of Airtable warnings is told once

    def evaluate(self, snapshot: Snapshot) -> list[Alert]:
        alerts: list[Alert] = []
        sinks = {name: s for name, s in snapshot.get("sinks", {}).items() if s.get("state") != "disabled"}
        for name in sorted((self._down | self._old) - set(sinks)):  # told before a restart, now disabled
            if name in self._down:
                self._down.discard(name)
                alerts.append(
                    Alert(
                        "sink_up",
                        "info",
                        f"{name} is no longer enabled: its alert is closed",
                        name,
                        {"state": "disabled"},
                    )
                )
            if name in self._old:
                self._old.discard(name)
                alerts.append(
                    Alert(
                        "backlog_cleared",
                        "info",
                        f"{name} is no longer enabled: its backlog alert is closed",
                        name,
                        {"oldest_pending_age_s": None},
                    )
                )
        for name, sink in sinks.items():
            state = sink.get("state", "starting")
            if state in DOWN_STATES and name not in self._down:
                self._down.add(name)
                alerts.append(
                    Alert(
                        "sink_down",
                        "critical",
                        f"{name} is {state}: {sink.get('last_error') or '?'}; "
                        f"{sink.get('pending', 0)} deliveries pending (kept, retried)",
                        name,
                        {"state": state, "last_error": sink.get("last_error"), "pending": sink.get("pending", 0)},
                    )
                )
            elif state == "up" and name in self._down:
                self._down.discard(name)
                alerts.append(Alert("sink_up", "info", f"{name} is up again", name, {"state": state}))

            # a dead letter is new when it died after the latest one told: told once, even across restarts
            dead, last = sink.get("dead", 0), sink.get("dead_last_at")
            if last and last > self._dead_seen.get(name, ""):
                alerts.append(
                    Alert(
                        "dead_letters",
                        "warning",
                        f"{name}: new dead letter(s), the latest at {last}; {dead} open in all: "
                        "`chatledger dead` lists them, to replay or discard",
                        name,
                        {"dead": dead, "dead_last_at": last},
                    )
                )
                self._dead_seen[name] = last

            age = sink.get("oldest_pending_age_s") or 0
            if age > self.threshold and name not in self._old:
                self._old.add(name)
                alerts.append(
                    Alert(
                        "backlog_old",
                        "warning",
                        f"{name}: the oldest pending delivery is {age:.0f} s old "
                        f"(threshold {self.threshold:.0f} s), {sink.get('pending', 0)} pending",
                        name,
                        {"oldest_pending_age_s": age, "pending": sink.get("pending", 0)},
                    )
                )
            elif age <= self.threshold and name in self._old:
                self._old.discard(name)
                alerts.append(
                    Alert(
                        "backlog_cleared",
                        "info",
                        f"{name}: the backlog is no longer old ({sink.get('pending', 0)} pending)",
                        name,
                        {"oldest_pending_age_s": sink.get("oldest_pending_age_s"), "pending": sink.get("pending", 0)},
                    )
                )

        postgres, airtable = sinks.get("postgres"), sinks.get("airtable")
        fallback = bool(
            postgres and airtable and postgres.get("state") in DOWN_STATES and airtable.get("state") == "up"
        )
        if fallback and not self._fallback:
            alerts.append(
                Alert(
                    "fallback_active",
                    "warning",
                    "PostgreSQL is unavailable; Airtable is receiving everything (operators: read "
                    "Airtable until PostgreSQL is back)",
                    None,
                    {"postgres_state": postgres.get("state") if postgres else None},
                )
            )
        elif self._fallback and not fallback and postgres and postgres.get("state") == "up":
            alerts.append(Alert("fallback_ended", "info", "PostgreSQL is back; the fallback is over"))
        if fallback or (postgres and postgres.get("state") == "up"):
            self._fallback = fallback

        quota = bool(
            airtable
            and (airtable.get("state") == "quota" or airtable.get("pause_reason") == "monthly API quota exhausted")
        )
        known = not airtable or airtable.get("state") != "starting"
        if quota and airtable is not None and not self._quota:
            ours = MONTHLY_LIMIT_REASON in (airtable.get("last_error") or "")
            alerts.append(
                Alert(
                    "quota_exhausted",
                    "critical",
                    (
                        f"[airtable] monthly_request_limit ({airtable.get('monthly_request_limit')}) is reached: "
                        "Airtable delivery waits for the month to turn, or goes on after `chatledger sync`"
                        if ours
                        else "Airtable's monthly API quota is exhausted: Airtable delivery stops (retried hourly, "
                        "or at once after `chatledger sync`)"
                    )
                    + "; PostgreSQL is unaffected",
                    "airtable",
                )
            )
        elif self._quota and not quota and known:
            alerts.append(
                Alert("quota_ended", "info", "Airtable delivery is no longer held by the monthly quota", "airtable")
            )
        if known:
            self._quota = quota

        stats: SinkStats = airtable or {}
        used, limit = stats.get("requests_this_month"), stats.get("monthly_request_limit")
        if used is not None and limit and used >= MONTH_WARNING_SHARE * limit:
            month = stats.get("month")
            if month != self._month_warned:
                self._month_warned = month
                alerts.append(
                    Alert(
                        "monthly_requests_high",
                        "warning",
                        f"Airtable: {used:,} of this month's {limit:,} requests used "
                        f"({used / limit:.0%}); {stats.get('requests_month_forecast', 0):,} at this "
                        "pace",
                        "airtable",
                        {
                            "requests_this_month": used,
                            "monthly_request_limit": limit,
                            "requests_month_forecast": stats.get("requests_month_forecast"),
                        },
                    )
                )

        held, cap = stats.get("records"), stats.get("max_records")
        if held is not None and cap:
            reached = max((share for share in RECORDS_WARNING_SHARES if held >= share * cap), default=0.0)
            if reached > self._records_share:
                alerts.append(
                    Alert(
                        "records_high",
                        "critical" if reached >= RECORDS_WARNING_SHARES[-1] else "warning",
                        f"Airtable: the base holds {held:,} of its plan's {cap:,} records ({held / cap:.0%});"
                        " at the cap new records are refused and Airtable delivery is held (`blocked`): "
                        "raise the plan, or set [airtable] retention_days",
                        "airtable",
                        {"records": held, "max_records": cap},
                    )
                )
            self._records_share = reached  # falls back when retention or an operator makes room: told again
        warnings = frozenset(stats.get("warnings") or ())
        if warnings and warnings not in self._warned:
            self._warned.add(warnings)
            alerts.append(
                Alert(
                    "airtable_warnings",
                    "warning",
                    "Airtable: chatledger keeps delivering, but the base differs from what it writes "
                    "(`chatledger airtable check`): " + "; ".join(sorted(warnings)),
                    "airtable",
                    {"warnings": sorted(warnings)},
                )
            )
        return alerts + self._source_alerts(snapshot.get("sources", {}).get("sendpulse"))

    def _source_alerts(self, source: SourceStatus | None) -> list[Alert]:
        """SendPulse misconfigured (critical) or down for long (warning), once a spell, and its end. A spell
        lasts until reconciliation works again: a misconfiguration found during an outage is told, and an
        outage after a misconfiguration is not (the operator is already on it)."""
        state = source.get("state") if source is not None else None
        if state is None or state == "starting":  # not known yet (an older daemon's snapshot says nothing)
            return []
        if state in ("up", "disabled"):
            if self._source is None:
                return []
            self._source = None
            message = (
                "SendPulse reconciliation works again"
                if state == "up"
                else "SendPulse reconciliation is no longer enabled: its alert is closed"
            )
            return [Alert("source_up", "info", message, None, {"source": "sendpulse", "state": state})]
        trouble = source_trouble(source)
        if trouble is None or trouble == self._source or (trouble == "down" and self._source):
            return []
        assert source is not None
        self._source = trouble
        return [
            Alert(
                f"source_{trouble}",
                "critical" if trouble == "misconfigured" else "warning",
                source_problem(source) or trouble,
                None,
                {
                    "source": "sendpulse",
                    "state": state,
                    "last_error": source.get("last_error"),
                    "failed_in_a_row": source.get("failed_in_a_row", 0),
                },
            )
        ]


class AlertLimiter:
    """At most one alert per key per `interval`; one that comes too soon waits, and a later one with the
    same key replaces it (so the operator gets the latest state, not a storm). A recovery goes out at
    once when its problem was told (`memory`), and ends a problem still waiting, untold, silently."""

    def __init__(self, interval: float, clock: Callable[[], float], memory: AlertMemory | None = None):
        self.interval = interval
        self._clock = clock
        self.memory = memory if memory is not None else AlertMemory()
        self._last: dict[tuple[str, str | None], float] = {}
        self._waiting: dict[tuple[str, str | None], Alert] = {}

    def admit(self, alerts: list[Alert]) -> list[Alert]:
        now = self._clock()
        out = []
        for alert in alerts:
            if alert.kind not in RECOVERIES:
                self._waiting[alert.key] = alert
                continue
            self._waiting.pop(alert.key, None)  # over before it was told: never told
            if alert.key in self.memory.open:
                out.append(alert)
        for key, alert in list(self._waiting.items()):
            last = self._last.get(key)
            if last is None or now - last >= self.interval:
                out.append(alert)
                self._last[key] = now
                del self._waiting[key]
        for alert in out:
            self.memory.note(alert)
        return out


class AlertSender:
    """Sends alerts from its own queue: a slow or failing target never holds anything else up."""

    def __init__(self, command: str, webhook_url: str):
        self.configure(command, webhook_url)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.sent = 0
        self.failed = 0

    def configure(self, command: str, webhook_url: str) -> None:
        """Set the targets ([alerts] command, webhook_url; again on SIGHUP): alerts sent from now go there."""
        self.argv = shlex.split(command) if command else []
        self.webhook_url = webhook_url

    @property
    def enabled(self) -> bool:
        return bool(self.argv or self.webhook_url)

    def submit(self, alert: Alert) -> None:
        logger.log("INFO" if alert.severity == "info" else "WARNING", "alert {}: {}", alert.kind, alert.message)
        if not self.enabled:
            return
        try:
            self.queue.put_nowait(alert.payload(datetime.now(UTC)))
        except asyncio.QueueFull:
            self.failed += 1
            logger.error("alert {} not sent: {} alerts already waiting to be sent", alert.kind, QUEUE_SIZE)

    async def run(self) -> None:
        while True:
            payload = await self.queue.get()
            body = json.dumps(payload).encode()
            if self.argv:
                await self._guarded("command", self._run_command(body))
            if self.webhook_url:
                await self._guarded("webhook", self._post(body))

    async def _guarded(self, target: str, sending: Any) -> None:
        try:
            await asyncio.wait_for(sending, SEND_TIMEOUT)
            self.sent += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed += 1
            # aiohttp's errors quote the whole URL, a chat webhook's secret included: the log keeps its host
            logger.error("alert {} failed: {}", target, f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc))

    async def _run_command(self, body: bytes) -> None:
        process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, err = await process.communicate(body)
        except asyncio.CancelledError:
            process.kill()
            raise
        if process.returncode:
            raise RuntimeError(f"{self.argv[0]} exited {process.returncode}: {err.decode(errors='replace')[-300:]}")

    async def _post(self, body: bytes) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(
                self.webhook_url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                if response.status >= 300:
                    raise RuntimeError(f"{safe_url(self.webhook_url)} answered HTTP {response.status}")
