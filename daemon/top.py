"""`chatledger top`: a live view of the daemon over its status socket, one frame a second.

Plain text with ANSI only to clear the screen, so it works in any terminal and over SSH; the frame
itself is built by a pure function from two snapshots.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from typing import Any

from daemon.status import BLOCKED_HINT, age_text, budget_text

CLEAR = "\x1b[H\x1b[2J"
RECENT_ERRORS = 8


class TopView:
    """Keeps what one frame needs from the previous one: counters for rates, recent errors."""

    def __init__(self) -> None:
        self._previous: dict[str, Any] | None = None
        self._previous_at = 0.0
        self.errors: deque[str] = deque(maxlen=RECENT_ERRORS)

    def frame(self, snapshot: dict[str, Any], now: float | None = None, width: int | None = None) -> str:
        now = time.monotonic() if now is None else now
        width = width or shutil.get_terminal_size((100, 30)).columns
        previous, elapsed = self._previous, now - self._previous_at
        self._previous, self._previous_at = snapshot, now
        self._note_errors(snapshot)

        def rate(path: tuple[str, ...]) -> str:
            if previous is None or elapsed <= 0:
                return "-"
            return f"{(_dig(snapshot, path) - _dig(previous, path)) / elapsed:.1f}/s"

        health = snapshot.get("health", {})
        journal = snapshot.get("journal", {})
        webhook = snapshot.get("webhook", {})
        lines = [
            f"chatledger {snapshot.get('version', '?')}  pid {snapshot.get('pid', '?')}  "
            f"up {age_text(snapshot.get('uptime_s'))}  {health.get('status', '?').upper()}",
            *(f"  ! {problem}" for problem in health.get("problems", [])),
            "",
            f"intake    {rate(('webhook', 'accepted'))} accepted   {webhook.get('accepted', 0)} accepted, "
            f"{webhook.get('duplicates', 0)} duplicates, {webhook.get('rejected', 0)} rejected",
            f"journal   {journal.get('events', 0)} events, {'writable' if journal.get('writable') else 'NOT WRITABLE'}, "
            f"{rate(('journal', 'commits'))} commits",
            "",
            f"{'sink':<10}{'state':<15}{'pending':>9}{'oldest':>9}{'rate':>10}{'delivered':>11}{'dead':>6}",
        ]
        for name, sink in snapshot.get("sinks", {}).items():
            if sink.get("state") == "disabled":
                lines.append(f"{name:<10}disabled")
                continue
            retry = f"  retry in {sink['retry_in_s']:.0f}s" if sink.get("retry_in_s") is not None else ""
            lines.append(f"{name:<10}{sink.get('state', '?'):<15}{sink.get('pending', 0):>9}"
                         f"{age_text(sink.get('oldest_pending_age_s')):>9}"
                         f"{rate(('sinks', name, 'delivered_since_start')):>10}{sink.get('delivered', 0):>11}"
                         f"{sink.get('dead', 0):>6}{retry}")
            if sink.get("state") == "blocked":
                lines.append(f"{'':<10}{BLOCKED_HINT}")
            if "tokens_left" in sink:
                lines.append(f"{'':<10}{budget_text(sink)}")
        lines += ["", "recent errors" if self.errors else "no errors seen", *(f"  {e}" for e in self.errors)]
        return "\n".join(line[:width] for line in lines)

    def _note_errors(self, snapshot: dict[str, Any]) -> None:
        found = [(sink.get("last_error_at") or "", f"{name}: {sink['last_error']}")
                 for name, sink in snapshot.get("sinks", {}).items() if sink.get("last_error")]
        journal = snapshot.get("journal", {})
        if journal.get("last_error"):
            found.append(("", f"journal: {journal['last_error']}"))
        for at, text in sorted(found):
            line = f"{at} {text}".strip()
            if line not in self.errors:
                self.errors.append(line)


def _dig(snapshot: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = snapshot
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return float(value) if isinstance(value, (int, float)) else 0.0
