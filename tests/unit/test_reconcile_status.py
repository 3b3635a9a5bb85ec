"""`sources.sendpulse` in `chatledger status` (readable) and in the metrics."""

from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import render as metrics
from daemon.status_text import render

UP = {
    "state": "up",
    "running": False,
    "interval_s": 300.0,
    "last_run_at": "2026-12-03T14:00:00Z",
    "last_reconciled_at": "2026-12-03T14:00:02Z",
    "window": {"since": "2026-12-03T13:45:00Z", "until": "2026-12-03T14:00:00Z"},
    "seen": 7,
    "added": 2,
    "present": 5,
    "runs": 4,
    "failed_runs": 1,
    "added_total": 9,
    "seen_total": 30,
    "requests_total": 40,
    "statuses": 1,
    "followed_up": 3,
    "statuses_total": 6,
    "last_error": "POST /oauth/access_token: no answer in time",
    "last_error_at": "2026-12-03T13:40:00Z",
}


def samples(snapshot):
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics(snapshot).decode())
        for s in family.samples
    }


def line_of(snapshot):
    return [line for line in render(snapshot).splitlines() if line.startswith("sendpulse")]


def test_status_says_what_the_last_run_found():
    [line] = line_of({"sources": {"sendpulse": UP}})
    assert "up" in line and "7 seen, 2 added, 1 status" in line and "2026-12-03T13:45:00Z" in line
    assert "2026-12-03T14:00:00Z" in line
    error = [line for line in render({"sources": {"sendpulse": UP}}).splitlines() if "no answer in time" in line]
    assert error and "at 2026-12-03T13:40:00Z" in error[0]


def test_status_says_disabled_and_misconfigured():
    [line] = line_of({"sources": {"sendpulse": {"state": "disabled"}}})
    assert "disabled" in line and "client_id" in line
    bad = {**UP, "state": "misconfigured", "last_error": "SendPulse refused the credentials"}
    assert "MISCONFIGURED" in "\n".join(line_of({"sources": {"sendpulse": bad}}))
    assert line_of({}) == []  # an older daemon's snapshot


def test_metrics_count_the_runs_and_what_they_added():
    found = samples({"sources": {"sendpulse": UP}})
    assert found[("chatledger_reconcile_added_total", ())] == 9
    assert found[("chatledger_reconcile_seen_total", ())] == 30
    assert found[("chatledger_reconcile_statuses_total", ())] == 6
    assert found[("chatledger_reconcile_runs_total", ())] == 4
    assert found[("chatledger_reconcile_failed_runs_total", ())] == 1
    assert found[("chatledger_sendpulse_requests_total", ())] == 40
    assert found[("chatledger_sendpulse_state", (("state", "up"),))] == 1
    assert found[("chatledger_sendpulse_state", (("state", "down"),))] == 0
    assert found[("chatledger_reconcile_last_success_timestamp_seconds", ())] > 1.7e9
    disabled = samples({"sources": {"sendpulse": {"state": "disabled"}}})
    assert disabled[("chatledger_sendpulse_state", (("state", "disabled"),))] == 1
    assert ("chatledger_reconcile_added_total", ()) not in disabled
