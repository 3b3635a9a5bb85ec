"""What the commands draw when they write to a terminal: tables, `top`'s live view, `recover`'s progress.

Only for a terminal: piped, redirected or under a dumb terminal the commands print the plain text
scripts and logs read (status_text.render, TopView.frame...), and --json is never drawn. Every text that
comes from outside (errors, ids, reasons, customer text) goes in through `safe`: never read as rich
markup, its control characters shown, not obeyed, so a dead letter cannot repaint the operator's screen.
"""

from __future__ import annotations

from typing import IO, Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.padding import Padding
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from daemon.snapshot import Snapshot, SourceStatus
from daemon.status_text import age_text, alerts_text, error_text, sink_notes, source_lines
from daemon.top import DISABLED_SOURCE, Frame, SourceRow

# C0 and C1 controls but the newline, as \xNN: an ESC in an error must not reach the terminal
_VISIBLE = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if code != 0x0A}
STATE_STYLES = {
    "up": "green",
    "starting": "cyan",
    "disabled": "dim",
    "throttled": "yellow",
    "quota": "yellow",
    "down": "bold red",
    "misconfigured": "bold red",
    "blocked": "bold red",
}
RECOVER_COLUMNS = ("read", "inserted", "present", "conflicting", "replaced", "unusable")


def safe(value: Any, style: str = "") -> Text:
    """Text from outside shown as it is: no markup, control characters visible."""
    return Text("" if value is None else str(value).translate(_VISIBLE), style=style)


def _health(status: str) -> Text:
    return Text(status.upper(), style="bold green" if status == "healthy" else "bold red")


def _state(state: str) -> Text:
    return safe(state, STATE_STYLES.get(state, ""))


def _count(value: Any, alarm: str = "") -> Text:
    """A count, in the alarm style when it is not zero."""
    return safe(value, alarm if value else "")


def _table(*columns: str, right: tuple[str, ...] = (), **options: Any) -> Table:
    """A table; the `right` columns (counts) right-aligned; a long word folded, never cut (an id, a key)."""
    table = Table(header_style="bold", **options)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return table


def _lines(*parts: Text) -> Text:
    """Lines of one cell."""
    return Text("\n").join(part for part in parts if part.plain)


class _ByWidth:
    """The wide rendering, or the narrow one on a terminal narrower than `at` columns (an int), or than
    `at` needs unwrapped (a renderable: a table of counts)."""

    def __init__(self, wide: RenderableType, narrow: RenderableType, at: int | RenderableType):
        self.wide, self.narrow, self.at = wide, narrow, at

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        unwrapped = options.update_width(10_000)
        needed = self.at if isinstance(self.at, int) else Measurement.get(console, unwrapped, self.at).maximum
        yield self.wide if options.max_width >= needed else self.narrow


def _block(head: Text, lines: list[Text]) -> RenderableType:
    """A head line and its lines indented beneath: one item on a narrow terminal."""
    body = _lines(*lines)
    return Group(head, Padding(body, (0, 0, 0, 2))) if body.plain else head


def _sinks(rows: list[tuple[str, str, dict[str, Any], list[Text]]], head: str = "sink") -> RenderableType:
    """Sinks (or sources: `head`) as (name, state, counts, notes): a table of the counts, the notes beneath it;
    on a narrow terminal a few lines a sink."""
    labels = list(rows[0][2]) if rows else []
    table = _table(head, "state", *labels, right=tuple(labels))
    notes = Table.grid(padding=(0, 2))
    notes.add_column(style="bold", no_wrap=True)
    notes.add_column(overflow="fold")
    narrow = []
    for name, state, counts, lines in rows:
        cells = [_count(value, "bold red") if label == "dead" else safe(value) for label, value in counts.items()]
        table.add_row(safe(name, "bold"), _state(state), *cells)
        if lines:
            notes.add_row(safe(name), _lines(*lines))
        shown = ", ".join(f"{label} {value}" for label, value in counts.items() if value != "")
        narrow.append(_block(Text.assemble(safe(name, "bold"), "  ", _state(state)), [safe(shown), *lines]))
    return _ByWidth(Group(table, notes) if notes.row_count else table, Group(*narrow), at=table)


def _overview(title: str, rows: list[tuple[str, Text]]) -> RenderableType:
    """A panel of labelled lines (health, journal, intake...) under the daemon's version, pid and uptime."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(label, value)
    return Panel(grid, title=safe(title, "bold"), title_align="left")


def status_view(snapshot: Snapshot) -> RenderableType:
    """`chatledger status` on a terminal: what status.render says, as a panel and the sinks' table."""
    health = snapshot.get("health", {})
    journal = snapshot.get("journal", {})
    webhook = snapshot.get("webhook", {})
    rows = [("health", _health(health.get("status", "?")))]
    rows += [("", Text.assemble("- ", safe(problem, "red"))) for problem in health.get("problems", [])]
    rows += [
        ("journal", safe(journal.get("path", "?"))),
        (
            "",
            Text.assemble(
                ("writable", "") if journal.get("writable") else ("NOT WRITABLE", "bold red"),
                f", {journal.get('events', 0)} events, {journal.get('quarantined', 0)} quarantined",
            ),
        ),
        (
            "webhook",
            safe(
                f"{webhook.get('accepted', 0)} accepted, {webhook.get('duplicates', 0)} duplicates, "
                f"{webhook.get('rejected', 0)} rejected"
            ),
        ),
    ]
    alerts = alerts_text(snapshot.get("alerts", {}))
    if alerts:
        rows.append(("alerts", safe(alerts, "red" if snapshot["alerts"].get("failed") else "")))
    sinks = []
    for name, sink in snapshot.get("sinks", {}).items():
        state = sink.get("state", "?")
        counts = {
            "pending": sink.get("pending", 0),
            "oldest": age_text(sink.get("oldest_pending_age_s")),
            "delivered": sink.get("delivered", 0),
            "dead": sink.get("dead", 0),
        }
        error = safe(error_text(sink), "dim" if state == "up" else "red")
        notes = [safe(note, "yellow" if note.startswith("warning:") else "dim") for note in sink_notes(name, sink)]
        sinks.append((name, state, counts, [line for line in (error, *notes) if line.plain]))
    title = (
        f"chatledger {snapshot.get('version', '?')}  pid {snapshot.get('pid', '?')}  "
        f"up {age_text(snapshot.get('uptime_s'))}"
    )
    source = _source_status(snapshot.get("sources", {}).get("sendpulse"))
    return Group(_overview(title, rows), _sinks(sinks), *([source] if source.plain else []))


def _source_status(source: SourceStatus | None) -> Text:
    """The plain text's SendPulse lines (none from an older daemon), its state's colour, its error in red."""
    head, *errors = source_lines(source)[1:] or [""]  # without the blank line before them
    state = source.get("state", "") if source is not None else ""
    return _lines(safe(head, STATE_STYLES.get(state, "")), *(safe(line, "red") for line in errors))


def top_view(frame: Frame) -> RenderableType:
    """One frame of `chatledger top` on a terminal."""
    rows = [("health", _health(frame.health.lower()))]
    rows += [("", Text.assemble("! ", safe(problem, "red"))) for problem in frame.problems]
    rows += [
        ("intake", safe(frame.intake)),
        ("journal", safe(frame.journal, "bold red" if "NOT WRITABLE" in frame.journal else "")),
    ]
    sinks = []
    for sink in frame.sinks:
        counts = {
            "pending": sink.pending,
            "oldest": sink.oldest,
            "rate": sink.rate,
            "delivered": sink.delivered,
            "dead": sink.dead,
        }
        if sink.state == "disabled":
            counts = {label: "" for label in counts}
        lines = [safe(sink.retry, "yellow"), *(safe(note, "dim") for note in sink.notes)]
        sinks.append((sink.name, sink.state, counts, [line for line in lines if line.plain]))
    errors = (
        _lines(*(safe(error, "red") for error in frame.errors)) if frame.errors else Text("no errors seen", style="dim")
    )
    source = [_source(frame.source)] if frame.source else []
    return Group(
        _overview(frame.title, rows), _sinks(sinks), *source, Panel(errors, title="recent errors", title_align="left")
    )


def _source(source: SourceRow) -> RenderableType:
    """SendPulse reconciliation in `top`: a table of its own beneath the sinks', or one line when disabled."""
    if source.state == "disabled":
        return Text.assemble(safe(source.name, "bold"), "  ", safe(DISABLED_SOURCE, "dim"))
    counts = {
        "reconciled": source.reconciled,
        "seen": source.seen,
        "added": source.added,
        "requests": source.requests,
        "rate": source.rate,
    }
    return _sinks([(source.name, source.state, counts, [safe(note, "dim") for note in source.notes])], head="source")


def dead_view(letters: dict[str, list[dict[str, Any]]], discarded: bool) -> RenderableType:
    """`chatledger dead` (or `--discarded`) on a terminal: a row a dead letter, what it is beside why."""
    table = _table("dead letter", "reason, last error" if discarded else "last error", show_lines=True)
    table.columns[0].max_width = 36  # a long dedup key folds; the error keeps the room
    narrow = []
    for sink, rows in letters.items():
        for row in rows:
            head = Text.assemble(safe(sink, "bold"), " event ", safe(row["event_id"], "bold"))
            what = [safe(row["title"]), safe(row["dedup_key"])]
            if discarded:
                what += [safe(f"discarded {row['discarded_at']}"), safe(f"by {row['discarded_by']}")]
                why = [safe(f"reason: {row['reason']}", "yellow"), safe(row["last_error"], "red")]
            else:
                what.insert(1, safe(row["updated_at"] or "?"))
                why = [safe(row["last_error"], "red")]
            table.add_row(_lines(head, *what), _lines(*why))
            narrow.append(_block(head, what + why))
    return _ByWidth(table, Group(*narrow), at=72)


def requeued_view(counts: dict[str, int], what: str, note: str) -> RenderableType:
    """`chatledger replay`: how many of `what` each sink had re-queued, and what happens next (`note`)."""
    if not counts:
        return Text(f"no sink is enabled: no {what} re-queued", style="yellow")
    table = _table("sink", "re-queued", right=("re-queued",))
    for sink, count in counts.items():
        table.add_row(safe(sink, "bold"), _count(count, "bold"))
    return Group(safe(f"{what} re-queued", "bold"), table, safe(note, "dim"))


def recover_view(
    tables: dict[str, dict[str, Any]], inserted: str = "inserted", replaced: str = "replaced"
) -> RenderableType:
    """`chatledger recover`'s counts per table; a dry run heads them "would insert", "would replace"."""
    heads = {"inserted": inserted, "replaced": replaced}
    labels = [heads.get(column, column) for column in RECOVER_COLUMNS]
    table = _table("", *labels, right=tuple(labels))
    alarms = {"conflicting": "yellow", "unusable": "bold red"}
    narrow = []
    for kind, tally in tables.items():
        counts = [_count(tally.get(column, 0), alarms.get(column, "")) for column in RECOVER_COLUMNS]
        table.add_row(safe(kind, "bold"), *counts)
        narrow.append(
            _block(safe(kind, "bold"), [Text.assemble(count, f" {label}") for count, label in zip(counts, labels)])
        )
    return _ByWidth(table, Group(*narrow), at=table)


class RecoverProgress:
    """`recover`'s progress while it reads Airtable page by page: a line per table, until stop()."""

    def __init__(self, console: Console):
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=12),
            TextColumn("{task.fields[read]} read, {task.fields[inserted]} {task.fields[new]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}
        self._progress.start()

    def __call__(self, report: dict[str, Any]) -> None:
        for kind, tally in report["tables"].items():
            counts = {
                "read": tally.get("read", 0),
                "inserted": tally.get("inserted", 0),
                "new": "would be new" if report.get("dry_run") else "new",
            }
            if kind not in self._tasks:
                self._tasks[kind] = self._progress.add_task(kind, total=None, **counts)
            else:
                self._progress.update(self._tasks[kind], **counts)
        self._progress.refresh()

    def stop(self) -> None:
        self._progress.stop()


class TopScreen:
    """`top`'s frames drawn in place (rich Live) until close()."""

    def __init__(self, console: Console):
        self._live = Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
        self._started = False

    def show(self, frame: Frame | str) -> None:
        """A frame, or the message saying why there is none."""
        if not self._started:
            self._live.start()
            self._started = True
        self._live.update(top_view(frame) if isinstance(frame, Frame) else safe(frame, "bold red"), refresh=True)

    def close(self) -> None:
        if self._started:
            self._live.stop()


class Terminal:
    """A rich console on a terminal, with what each command prints there."""

    def __init__(self, console: Console):
        self.console = console

    @classmethod
    def on(cls, stream: IO[str]) -> Terminal | None:
        """The terminal `stream` is (NO_COLOR respected); None when it is a dumb one: plain text is better."""
        console = Console(file=stream)
        return None if console.is_dumb_terminal or not console.is_terminal else cls(console)

    def print(self, renderable: RenderableType) -> None:
        self.console.print(renderable)

    def status(self, snapshot: Snapshot) -> None:
        self.print(status_view(snapshot))

    def dead(self, letters: dict[str, list[dict[str, Any]]], discarded: bool) -> None:
        self.print(dead_view(letters, discarded))

    def requeued(self, counts: dict[str, int], what: str, note: str) -> None:
        self.print(requeued_view(counts, what, note))

    def recovered(self, tables: dict[str, dict[str, Any]], inserted: str, replaced: str) -> None:
        self.print(recover_view(tables, inserted, replaced))

    def progress(self) -> RecoverProgress:
        return RecoverProgress(self.console)

    def top(self) -> TopScreen:
        return TopScreen(self.console)
