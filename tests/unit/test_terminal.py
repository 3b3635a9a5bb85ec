"""What the commands draw on a terminal (rich): the same content as the plain text, nothing injected."""

import io
import re

import pytest
from rich.console import Console

from daemon import terminal
from daemon.top import TopView

CAP = "upserting 1 records into Interactions: HTTP 422 BASE_RECORD_LIMIT_EXCEEDED: the maximum of 1000 records"
HOSTILE = "[bold]refused[/bold] \x1b[31mred\x1b[0m [link=http://x]y[/link]"
BOX = re.compile(r"[\u2500-\u257f]")  # box drawing: the table's own lines


def console(width=100):
    return Console(force_terminal=True, width=width, record=True, file=io.StringIO())


def shown(renderable, width=100):
    """The text a terminal shows, and that every line fits the width."""
    out = console(width)
    out.print(renderable)
    text = out.export_text()
    assert all(len(line) <= width for line in text.splitlines()), text
    return text


def flat(text):
    """The words, without the table's lines: a cell's text wrapped over rows reads as one again."""
    return " ".join(BOX.sub(" ", text).split())


def snapshot():
    postgres = {
        "state": "down",
        "pending": 4,
        "delivered": 3,
        "dead": 2,
        "oldest_pending_age_s": 75,
        "last_error": HOSTILE,
        "last_error_at": "2026-12-03T10:00:00Z",
        "backfill": {"state": "running", "total": 7, "done": 3, "to_go": 4},
    }
    airtable = {
        "state": "blocked",
        "pending": 40,
        "delivered": 960,
        "dead": 0,
        "last_error": CAP,
        "last_error_at": "2026-11-25T12:00:00Z",
        "tokens_left": 4,
        "requests_per_window": 5,
        "requests_last_minute": 12,
        "rate_limited_429": 1,
        "warnings": ["Interactions.Content is missing: left out"],
    }
    return {
        "version": "0.1.0",
        "pid": 4242,
        "uptime_s": 30,
        "health": {"status": "degraded", "problems": ["airtable is blocked: " + CAP]},
        "journal": {"writable": True, "events": 1000, "quarantined": 3, "path": "state/journal.sqlite"},
        "webhook": {"accepted": 11, "duplicates": 2, "rejected": 1},
        "alerts": {"enabled": True, "sent": 5, "failed": 1},
        "sinks": {"postgres": postgres, "airtable": airtable},
    }


def test_status_shows_what_the_plain_text_does_in_a_table():
    text = shown(terminal.status_view(snapshot()))
    words = flat(text)
    assert "┃" in text or "│" in text  # a table, not the plain columns
    assert "chatledger 0.1.0" in words and "pid 4242" in words and "DEGRADED" in words
    assert "airtable is blocked: " + CAP in words
    assert "state/journal.sqlite" in words and "1000 events, 3 quarantined" in words
    assert "11 accepted, 2 duplicates, 1 rejected" in words and "5 sent, 1 FAILED (see the log)" in words
    assert re.search(r"postgres down 4 75s 3 2\b", words) and re.search(r"airtable blocked 40 - 960 0\b", words)
    assert CAP + " (at 2026-11-25T12:00:00Z)" in words
    assert "held, nothing dead-lettered" in words and "chatledger sync" in words  # what to do about blocked
    assert "backfill: 3 of 7 events journaled before postgres was enabled made pending, 4 to go" in words
    assert "12 requests in the last minute, 1 x 429, 4/5 tokens left" in words
    assert "warning: Interactions.Content is missing: left out" in words


def test_an_error_from_before_the_sink_came_back_is_not_shown_as_current():
    back = snapshot()
    back["sinks"]["postgres"].update(state="up", last_error="connection refused")
    assert "none now (the last, at 2026-12-03T10:00:00Z: connection refused)" in flat(shown(terminal.status_view(back)))


def test_text_from_outside_is_printed_literally_never_as_markup_or_escapes():
    letters = {
        "postgres": [
            {
                "event_id": 7,
                "dedup_key": "[red]key[/red]",
                "title": "incoming_message",
                "attempts": 9,
                "last_error": HOSTILE,
                "updated_at": "2026-12-03T10:00:00Z",
                "state": "dead",
            }
        ]
    }
    for view in (terminal.status_view(snapshot()), terminal.dead_view(letters, discarded=False)):
        raw = io.StringIO()
        Console(force_terminal=True, width=200, file=raw, color_system="truecolor").print(view)
        words = flat(shown(view, width=200))
        assert "[bold]refused[/bold] \\x1b[31mred\\x1b[0m [link=http://x]y[/link]" in words
        assert "\x1b[31mred" not in raw.getvalue() and "\x1b]8;" not in raw.getvalue()  # no colour, no link
    assert "[red]key[/red]" in flat(shown(terminal.dead_view(letters, discarded=False), width=200))


def test_dead_letters_are_a_table_with_their_errors():
    letters = {
        "postgres": [
            {
                "event_id": 7,
                "dedup_key": "wamid.7",
                "title": "incoming_message",
                "attempts": 9,
                "last_error": "value too long for type character varying(20)",
                "updated_at": "2026-12-03T10:00:00Z",
                "state": "dead",
            }
        ],
        "airtable": [],
    }
    text = shown(terminal.dead_view(letters, discarded=False))
    assert "┃ dead letter" in text and "┃ last error" in text
    assert re.search(r"│ postgres event 7 +│ value too long for type character varying\(20\) +│", text)
    words = flat(text)
    assert "incoming_message 2026-12-03T10:00:00Z wamid.7" in words
    discarded = {
        "postgres": [
            {
                **letters["postgres"][0],
                "state": "discarded",
                "discarded_at": "2026-12-04T09:00:00Z",
                "discarded_by": "ana",
                "reason": "test data",
            }
        ]
    }
    words = flat(shown(terminal.dead_view(discarded, discarded=True)))
    assert "2026-12-04T09:00:00Z" in words and "by ana" in words and "reason: test data" in words
    assert "value too long" in words


def test_replay_shows_what_was_requeued_per_sink():
    words = flat(shown(terminal.requeued_view({"postgres": 3, "airtable": 0}, "dead letters", "replay triggered")))
    assert "dead letters re-queued" in words and re.search(r"postgres 3\b", words) and re.search(r"airtable 0\b", words)
    assert "replay triggered" in words
    nothing = terminal.requeued_view({}, "dead letters", "")
    assert "no sink is enabled: no dead letters re-queued" in flat(shown(nothing))


def test_recover_ends_with_its_counts_per_table():
    tables = {
        kind: {"read": 12, "inserted": 5, "present": 6, "conflicting": 1, "replaced": 0, "unusable": 0, "built": 0}
        for kind in ("conversations", "interactions", "escalations")
    }
    tables["escalations"].update(read=0, inserted=0, present=0, conflicting=0)
    words = flat(shown(terminal.recover_view(tables)))
    assert "read inserted present conflicting replaced unusable" in words
    assert "conversations 12 5 6 1 0 0" in words and "escalations 0 0 0 0 0 0" in words
    dry = flat(shown(terminal.recover_view(tables, "would insert", "would replace"), width=120))
    assert "read would insert present conflicting would replace unusable" in dry


def test_recover_shows_its_progress_per_table():
    out = console()
    progress = terminal.RecoverProgress(out)
    report = {
        "tables": {
            "conversations": {"read": 100, "inserted": 40},
            "interactions": {"read": 0, "inserted": 0},
            "escalations": {"read": 0, "inserted": 0},
        },
        "problems": [],
    }
    progress(report)
    report["tables"]["interactions"].update(read=300, inserted=299)
    progress(report)
    words = flat(BOX.sub(" ", out.export_text()))
    progress.stop()
    assert "conversations" in words and "100 read" in words and "40 new" in words
    assert "interactions" in words and "300 read" in words and "299 new" in words
    out = console()
    dry = terminal.RecoverProgress(out)
    dry({**report, "dry_run": True})
    dry.stop()
    assert "300 read, 299 would be new" in flat(out.export_text())


def test_top_draws_the_same_frame_as_a_table():
    view = TopView()
    state = snapshot()
    state["sinks"]["postgres"]["retry_in_s"] = 4.2
    state["sinks"]["postgres"]["delivered_since_start"] = 0
    view.update(state, now=1.0)
    state = {**state, "webhook": {"accepted": 21, "duplicates": 2, "rejected": 1}}
    frame = view.update(state, now=3.0)
    words = flat(shown(terminal.top_view(frame)))
    assert "DEGRADED" in words and "airtable is blocked" in words
    assert "5.0/s accepted" in words and "21 accepted, 2 duplicates, 1 rejected" in words
    assert re.search(r"postgres down 4 75s 0\.0/s 3 2\b", words) and "postgres retry in 4s" in words
    assert "held, nothing dead-lettered" in words and "4/5 tokens left" in words
    assert "recent errors" in words and "airtable: " + CAP in words
    assert "\\x1b[31mred" in words  # the error list too shows escapes, never obeys them


def test_a_narrow_terminal_gets_every_view_a_few_lines_an_item():
    letters = {
        "postgres": [
            {
                "event_id": 7,
                "dedup_key": "wamid.7",
                "title": "incoming_message",
                "attempts": 9,
                "last_error": CAP,
                "updated_at": "2026-12-03T10:00:00Z",
                "state": "dead",
            }
        ]
    }
    tables = {
        "conversations": {
            "read": 1,
            "inserted": 2,
            "present": 0,
            "conflicting": 0,
            "replaced": 0,
            "unusable": 0,
            "built": 0,
        }
    }
    expected = [
        (
            terminal.status_view(snapshot()),
            [
                "postgres down pending 4, oldest 75s, delivered 3, dead 2",
                "airtable is blocked",
                "after `chatledger sync`",
            ],
        ),
        (terminal.top_view(TopView().update(snapshot(), now=1.0)), ["airtable blocked pending 40, oldest -"]),
        (
            terminal.dead_view(letters, discarded=False),
            ["postgres event 7 incoming_message 2026-12-03T10:00:00Z wamid.7 " + CAP],
        ),
        (terminal.recover_view(tables), ["conversations 1 read 2 inserted 0 present"]),
        (terminal.requeued_view({"postgres": 1}, "deliveries", "replay triggered"), ["postgres 1"]),
    ]
    for renderable, words in expected:
        text = flat(shown(renderable, width=40))
        assert all(word in text for word in words), text


class _Tty(io.StringIO):
    def isatty(self):
        return True


COLOUR = re.compile(r"\x1b\[[0-9;]*(?:3[0-9]|9[0-7])[;m]")


@pytest.mark.parametrize("no_color", [False, True])
def test_no_color_is_respected(monkeypatch, no_color):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    stream = _Tty()
    terminal.Terminal.on(stream).console.print(terminal.status_view(snapshot()))
    assert "DEGRADED" in stream.getvalue()
    assert bool(COLOUR.search(stream.getvalue())) is not no_color


def test_a_dumb_terminal_gets_plain_text(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert terminal.Terminal.on(_Tty()) is None


SENDPULSE = {
    "state": "misconfigured",
    "running": True,
    "last_reconciled_at": "2026-12-03T14:00:02Z",
    "seen": 7,
    "added": 2,
    "requests_total": 40,
    "last_error": HOSTILE,
    "last_error_at": "2026-12-03T14:05:00Z",
}


def test_top_draws_sendpulse_beneath_the_sinks_as_a_table_of_its_own():
    state = {**snapshot(), "sources": {"sendpulse": SENDPULSE}}
    words = flat(shown(terminal.top_view(TopView().update(state, now=1.0))))
    assert re.search(
        r"source state reconciled seen added requests rate .*"
        r"sendpulse misconfigured 2026-12-03T14:00:02Z 7 2 40 -",
        words,
    ), words
    assert "sendpulse running now" in words and "sendpulse: [bold]refused[/bold] \\x1b[31mred" in words
    narrow = flat(shown(terminal.top_view(TopView().update(state, now=1.0)), width=40))
    assert "sendpulse misconfigured reconciled 2026-12-03T14:00:02Z, seen 7, added 2, requests 40" in narrow
    off = {**snapshot(), "sources": {"sendpulse": {"state": "disabled"}}}
    words = flat(shown(terminal.top_view(TopView().update(off, now=1.0))))
    assert "sendpulse disabled ([sendpulse] client_id empty: nothing is fetched back)" in words
    assert "reconciled" not in words


def test_status_on_a_terminal_says_what_sendpulse_reconciliation_does_as_the_plain_text_does():
    words = flat(shown(terminal.status_view({**snapshot(), "sources": {"sendpulse": SENDPULSE}})))
    assert "sendpulse MISCONFIGURED, running now, no run finished yet" in words
    assert "last error (at 2026-12-03T14:05:00Z): [bold]refused[/bold] \\x1b[31mred" in words
    words = flat(shown(terminal.status_view({**snapshot(), "sources": {"sendpulse": {"state": "disabled"}}})))
    assert "sendpulse disabled ([sendpulse] client_id empty): nothing is fetched back" in words
