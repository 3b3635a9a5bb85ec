"""`chatledger top`: a live view of the daemon over its status socket, one frame a second.

A frame is built by a pure function from two snapshots; written here as plain text (not on a
terminal), and drawn by daemon/terminal.py on one.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.snapshot import Snapshot, SourceStatus
from daemon.status_text import BLOCKED_HINT, age_text, budget_text

RECENT_ERRORS = 8


@dataclass(frozen=True)
class SinkRow:
    name: str
    state: str
    pending: Any = 0
    oldest: str = "-"
    rate: str = "-"
    delivered: Any = 0
    dead: Any = 0
    retry: str = ""  # "retry in 4s" while a retry is scheduled
    notes: tuple[str, ...] = ()  # the blocked hint, the Airtable budget


@dataclass(frozen=True)
class SourceRow:
    """SendPulse reconciliation: its state, the end of the last window read whole, the last run's findings."""

    name: str
    state: str
    reconciled: str = "never"
    seen: Any = 0
    added: Any = 0
    requests: Any = 0  # since start
    rate: str = "-"
    notes: tuple[str, ...] = ()  # "running now"


DISABLED_SOURCE = "disabled ([sendpulse] client_id empty: nothing is fetched back)"


@dataclass(frozen=True)
class Frame:
    """What one frame of `top` says, before it is laid out."""

    title: str
    health: str
    problems: tuple[str, ...]
    intake: str
    journal: str
    sinks: tuple[SinkRow, ...]
    errors: tuple[str, ...]
    source: SourceRow | None = None  # None: a daemon that does not report it

    def text(self, width: int) -> str:
        lines = [
            f"{self.title}  {self.health}",
            *(f"  ! {problem}" for problem in self.problems),
            "",
            f"intake    {self.intake}",
            f"journal   {self.journal}",
            "",
            f"{'sink':<10}{'state':<15}{'pending':>9}{'oldest':>9}{'rate':>10}{'delivered':>11}{'dead':>6}",
        ]
        for sink in self.sinks:
            if sink.state == "disabled":
                lines.append(f"{sink.name:<10}disabled")
                continue
            lines.append(
                f"{sink.name:<10}{sink.state:<15}{sink.pending:>9}{sink.oldest:>9}{sink.rate:>10}"
                f"{sink.delivered:>11}{sink.dead:>6}{'  ' + sink.retry if sink.retry else ''}"
            )
            lines += [f"{'':<10}{note}" for note in sink.notes]
        lines += self._source_lines()
        lines += ["", "recent errors" if self.errors else "no errors seen", *(f"  {e}" for e in self.errors)]
        return "\n".join(line[:width] for line in lines)

    def _source_lines(self) -> list[str]:
        source = self.source
        if source is None:
            return []
        if source.state == "disabled":
            return ["", f"{source.name:<10}{DISABLED_SOURCE}"]
        return [
            "",
            f"{'source':<10}{'state':<15}{'reconciled':<22}{'seen':>6}{'added':>7}{'requests':>10}{'rate':>9}",
            f"{source.name:<10}{source.state:<15}{source.reconciled:<22}{source.seen:>6}{source.added:>7}"
            f"{source.requests:>10}{source.rate:>9}",
            *(f"{'':<10}{note}" for note in source.notes),
        ]


class TopView:
    """Keeps what one frame needs from the previous one: counters for rates, recent errors."""

    def __init__(self) -> None:
        self._previous: Snapshot | None = None
        self._previous_at = 0.0
        self.errors: deque[str] = deque(maxlen=RECENT_ERRORS)

    def frame(self, snapshot: Snapshot, now: float | None = None, width: int | None = None) -> str:
        return self.update(snapshot, now).text(width or shutil.get_terminal_size((100, 30)).columns)

    def update(self, snapshot: Snapshot, now: float | None = None) -> Frame:
        now = time.monotonic() if now is None else now
        previous, elapsed = self._previous, now - self._previous_at
        self._previous, self._previous_at = snapshot, now
        self._note_errors(snapshot)

        def rate(figure: Figure) -> str:
            if previous is None or elapsed <= 0:
                return "-"
            return f"{(_number(figure(snapshot)) - _number(figure(previous))) / elapsed:.1f}/s"

        health = snapshot.get("health", {})
        journal = snapshot.get("journal", {})
        webhook = snapshot.get("webhook", {})
        sinks = []
        for name, sink in snapshot.get("sinks", {}).items():
            if sink.get("state") == "disabled":
                sinks.append(SinkRow(name, "disabled"))
                continue
            notes = [BLOCKED_HINT] if sink.get("state") == "blocked" else []
            if "tokens_left" in sink:
                notes.append(budget_text(sink))
            sinks.append(
                SinkRow(
                    name,
                    sink.get("state", "?"),
                    sink.get("pending", 0),
                    age_text(sink.get("oldest_pending_age_s")),
                    rate(_delivered(name)),
                    sink.get("delivered", 0),
                    sink.get("dead", 0),
                    f"retry in {sink['retry_in_s']:.0f}s" if sink.get("retry_in_s") is not None else "",
                    tuple(notes),
                )
            )
        return Frame(
            title=f"chatledger {snapshot.get('version', '?')}  pid {snapshot.get('pid', '?')}  "
            f"up {age_text(snapshot.get('uptime_s'))}",
            health=health.get("status", "?").upper(),
            problems=tuple(health.get("problems", [])),
            intake=f"{rate(_accepted)} accepted   {webhook.get('accepted', 0)} accepted, "
            f"{webhook.get('duplicates', 0)} duplicates, {webhook.get('rejected', 0)} rejected",
            journal=f"{journal.get('events', 0)} events, {'writable' if journal.get('writable') else 'NOT WRITABLE'}, "
            f"{rate(_commits)} commits",
            sinks=tuple(sinks),
            errors=tuple(self.errors),
            source=_source_row(snapshot.get("sources", {}).get("sendpulse"), rate),
        )

    def _note_errors(self, snapshot: Snapshot) -> None:
        found = [
            (sink.get("last_error_at") or "", f"{name}: {sink['last_error']}")
            for name, sink in snapshot.get("sinks", {}).items()
            if sink.get("last_error")
        ]
        source = snapshot.get("sources", {}).get("sendpulse") or {}
        if source.get("last_error"):
            found.append((source.get("last_error_at") or "", f"sendpulse: {source['last_error']}"))
        journal = snapshot.get("journal", {})
        if journal.get("last_error"):
            found.append(("", f"journal: {journal['last_error']}"))
        for at, text in sorted(found):
            line = f"{at} {text}".strip()
            if line not in self.errors:
                self.errors.append(line)


def _source_row(source: SourceStatus | None, rate: Callable[[Figure], str]) -> SourceRow | None:
    if source is None:
        return None
    if source.get("state") == "disabled":
        return SourceRow("sendpulse", "disabled")
    return SourceRow(
        "sendpulse",
        source.get("state", "?"),
        source.get("last_reconciled_at") or "never",
        source.get("seen", 0),
        source.get("added", 0),
        source.get("requests_total", 0),
        rate(_sendpulse_requests),
        ("running now",) if source.get("running") else (),
    )


# A counter `top` shows as a rate: read from each of two snapshots (None: that daemon did not report it)
Figure = Callable[[Snapshot], float | None]


def _accepted(snapshot: Snapshot) -> float | None:
    return snapshot.get("webhook", {}).get("accepted")


def _commits(snapshot: Snapshot) -> float | None:
    return snapshot.get("journal", {}).get("commits")


def _delivered(name: str) -> Figure:
    def delivered(snapshot: Snapshot) -> float | None:
        sink = snapshot.get("sinks", {}).get(name)
        return sink.get("delivered_since_start") if sink else None

    return delivered


def _sendpulse_requests(snapshot: Snapshot) -> float | None:
    return snapshot.get("sources", {}).get("sendpulse", {}).get("requests_total")


def _number(value: float | None) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0
