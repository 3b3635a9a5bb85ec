"""The readable status: the text `chatledger status` prints off a terminal, and the lines `top` and the
terminal's views share (daemon.terminal). Pure: a snapshot in, text out.

The snapshot comes from a daemon that may be older than this command: each key is taken with .get.
"""

from __future__ import annotations

from daemon.snapshot import AlertsStatus, BackfillStatus, SinkStatus, Snapshot, SourceStatus

BLOCKED_HINT = (
    "held, nothing dead-lettered: the base refuses every write alike (a records cap, a plan limit: "
    "see the error); once there is room it drains by itself, or at once after `chatledger sync`"
)


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


def alerts_text(alerts: AlertsStatus) -> str | None:
    """How the alerts went, None when they are off."""
    if not alerts.get("enabled"):
        return None
    failed = f", {alerts['failed']} FAILED (see the log)" if alerts.get("failed") else ""
    return f"{alerts.get('sent', 0)} sent{failed}"


def _alerts_line(alerts: AlertsStatus) -> list[str]:
    text = alerts_text(alerts)
    return [f"alerts    {text}"] if text else []


def error_text(sink: SinkStatus) -> str:
    """The sink's last error, said as history once it is up again."""
    error = sink.get("last_error") or ""
    if error and sink.get("state") == "up":  # history, not the present: say so
        return f"none now (the last, at {sink.get('last_error_at') or '?'}: {error})"
    if error and sink.get("last_error_at"):
        return f"{error} (at {sink['last_error_at']})"
    return error


def sink_notes(name: str, sink: SinkStatus) -> list[str]:
    """The lines under a sink's row: what to do when blocked, the backfill, the Airtable budget, warnings."""
    notes = [BLOCKED_HINT] if sink.get("state") == "blocked" else []
    backfill = backfill_text(name, sink.get("backfill"))
    if backfill:
        notes.append(f"backfill: {backfill}")
    if "tokens_left" in sink:
        notes.append(budget_text(sink))
    return notes + [f"warning: {warning}" for warning in sink.get("warnings") or ()]


def render(snapshot: Snapshot) -> str:
    """A table an operator reads at a glance: health first, then intake, then each sink."""
    health = snapshot.get("health", {})
    journal = snapshot.get("journal", {})
    webhook = snapshot.get("webhook", {})
    lines = [
        f"chatledger {snapshot.get('version', '?')}  pid {snapshot.get('pid', '?')}  "
        f"up {age_text(snapshot.get('uptime_s'))}",
        f"health    {health.get('status', '?').upper()}",
    ]
    lines += [f"          - {problem}" for problem in health.get("problems", [])]
    lines += [
        "",
        f"journal   {journal.get('path', '?')}",
        f"          {'writable' if journal.get('writable') else 'NOT WRITABLE'}, "
        f"{journal.get('events', 0)} events, {journal.get('quarantined', 0)} quarantined",
        f"webhook   {webhook.get('accepted', 0)} accepted, {webhook.get('duplicates', 0)} duplicates, "
        f"{webhook.get('rejected', 0)} rejected",
        *_alerts_line(snapshot.get("alerts", {})),
        "",
        f"{'sink':<10}{'state':<15}{'pending':>9}{'oldest':>9}{'delivered':>11}{'dead':>7}  last error",
    ]
    for name, sink in snapshot.get("sinks", {}).items():
        lines.append(
            f"{name:<10}{sink.get('state', '?'):<15}{sink.get('pending', 0):>9}"
            f"{age_text(sink.get('oldest_pending_age_s')):>9}{sink.get('delivered', 0):>11}"
            f"{sink.get('dead', 0):>7}  {error_text(sink)}".rstrip()
        )
        lines += [f"{'':<10}{note}" for note in sink_notes(name, sink)]
    return "\n".join(lines + source_lines(snapshot.get("sources", {}).get("sendpulse")))


def source_lines(source: SourceStatus | None) -> list[str]:
    """SendPulse reconciliation: its state, the last run's window and findings, its last error."""
    if source is None:
        return []
    state = source.get("state", "?")
    if state == "disabled":
        return ["", "sendpulse disabled ([sendpulse] client_id empty): nothing is fetched back"]
    shown = state if state in ("up", "starting") else state.upper()
    window = source.get("window")
    if window:
        run = (
            f"last run {window.get('since')} to {window.get('until')}: {source.get('seen', 0)} seen, "
            f"{source.get('added', 0)} added, {source.get('statuses', 0)} status(es) learned"
        )
    else:
        run = "no run finished yet"
    running = ", running now" if source.get("running") else ""
    lines = ["", f"sendpulse {shown}{running}, {run}; {source.get('added_total', 0)} added since start"]
    if source.get("last_error"):
        when = f" (at {source['last_error_at']})" if source.get("last_error_at") else ""
        lines.append(f"{'':<10}last error{when}: {source['last_error']}")
    return lines


def backfill_text(name: str, backfill: BackfillStatus | None) -> str | None:
    """The events journaled before the sink was enabled, made pending at start; None when there were none."""
    if not backfill or not backfill.get("total"):
        return None
    what = f"events journaled before {name} was enabled made pending"
    if backfill.get("state") == "done":
        return f"{backfill.get('done', 0):,} {what} at start"
    return f"{backfill.get('done', 0):,} of {backfill['total']:,} {what}, {backfill.get('to_go', 0):,} to go"


def budget_text(sink: SinkStatus) -> str:
    """The Airtable request budget in one line (status and top)."""
    paused = f", paused until {sink['paused_until']} ({sink['pause_reason']})" if sink.get("paused_until") else ""
    month = ""
    if sink.get("requests_this_month") is not None:
        limit = sink.get("monthly_request_limit")
        share = f" of {limit:,} ({sink['requests_this_month'] / limit:.0%})" if limit else ""
        month = (
            f"; {sink['requests_this_month']:,} this month{share}, {sink.get('requests_month_forecast', 0):,} "
            "at this pace"
        )
    if sink.get("max_records"):
        held = sink.get("records")
        month += (
            f"; records {held:,} of {sink['max_records']:,} ({held / sink['max_records']:.0%})"
            if held is not None
            else f"; records not counted yet (max {sink['max_records']:,})"
        )
    return (
        f"{sink.get('requests_last_minute', 0)} requests in the last minute, "
        f"{sink.get('rate_limited_429', 0)} x 429, {sink['tokens_left']}/{sink.get('requests_per_window', '?')} "
        f"tokens left{paused}{month}"
    )
