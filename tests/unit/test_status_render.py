"""The readable status an operator reads at a glance."""

from daemon.status_text import render


def test_the_readable_status_lists_the_airtable_warnings():
    snapshot = {
        "sinks": {
            "airtable": {
                "state": "up",
                "pending": 0,
                "delivered": 3,
                "dead": 0,
                "tokens_left": 5,
                "warnings": ["Interactions.Content is missing: left out"],
            }
        }
    }
    assert "          warning: Interactions.Content is missing: left out" in render(snapshot).splitlines()


def test_an_error_from_before_the_sink_came_back_is_not_shown_as_current():
    failing = {
        "state": "down",
        "pending": 4,
        "delivered": 3,
        "dead": 0,
        "last_error": "connection refused",
        "last_error_at": "2026-12-03T10:00:00Z",
    }
    down = next(line for line in render({"sinks": {"postgres": failing}}).splitlines() if line.startswith("postgres"))
    assert down.endswith("  connection refused (at 2026-12-03T10:00:00Z)")
    back = {**failing, "state": "up", "pending": 0}
    up = next(line for line in render({"sinks": {"postgres": back}}).splitlines() if line.startswith("postgres"))
    assert up.endswith("  none now (the last, at 2026-12-03T10:00:00Z: connection refused)")


def test_the_readable_status_shows_a_backfill_going_on_and_done():
    def status(backfill):
        return render(
            {"sinks": {"postgres": {"state": "up", "pending": 4, "delivered": 3, "dead": 0, "backfill": backfill}}}
        ).splitlines()

    going = {"state": "running", "total": 7, "done": 3, "to_go": 4}
    assert "          backfill: 3 of 7 events journaled before postgres was enabled made pending, 4 to go" in status(
        going
    )
    done = {"state": "done", "total": 7, "done": 7, "to_go": 0}
    assert "          backfill: 7 events journaled before postgres was enabled made pending at start" in status(done)
    nothing = {"state": "done", "total": 0, "done": 0, "to_go": 0}
    assert not any("backfill" in line for line in status(nothing) + status(None))
