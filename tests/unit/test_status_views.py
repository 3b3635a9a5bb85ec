"""What the readable status, `top` and the health verdict say about a sink's state."""

from daemon.health import judge as _health
from daemon.status_text import render
from daemon.top import TopView

CAP = "upserting 1 records into Interactions: HTTP 422 BASE_RECORD_LIMIT_EXCEEDED: the maximum of 1000 records"


def snapshot(state, last_error=None):
    airtable = {
        "state": state,
        "pending": 40,
        "delivered": 960,
        "dead": 0,
        "oldest_pending_age_s": 75,
        "last_error": last_error,
        "last_error_at": "2026-11-25T12:00:00Z" if last_error else None,
    }
    return {
        "version": "t",
        "pid": 1,
        "uptime_s": 10,
        "journal": {"writer_alive": True, "writable": True, "events": 1000, "path": "j.sqlite"},
        "webhook": {},
        "sinks": {"airtable": airtable},
    }


def test_a_blocked_base_is_a_problem_shown_with_its_error_and_what_to_do():
    blocked = snapshot("blocked", CAP)
    health = _health(blocked)
    assert health["status"] == "degraded" and health["problems"] == [f"airtable is blocked: {CAP}"]
    readable = render({**blocked, "health": health})
    assert "blocked" in readable and CAP in readable
    assert "held, nothing dead-lettered" in readable and "chatledger sync" in readable
    frame = TopView().frame({**blocked, "health": health}, now=1.0, width=400)
    assert "held, nothing dead-lettered" in frame and "airtable is blocked" in frame


def test_an_up_base_says_nothing_of_the_kind():
    up = snapshot("up")
    assert _health(up) == {"status": "healthy", "problems": []}
    assert "held" not in render({**up, "health": _health(up)})


def test_open_dead_letters_degrade_and_say_how_to_deal_with_them_discarded_ones_do_not():
    dead = snapshot("up")
    dead["sinks"]["airtable"].update(dead=2, discarded=5)
    health = _health(dead)
    assert health["status"] == "degraded"
    [problem] = health["problems"]
    assert problem.startswith("airtable has 2 dead letters")
    assert "`chatledger dead`" in problem and "replay --dead" in problem and "dead --discard" in problem
    dead["sinks"]["airtable"].update(dead=0)
    assert _health(dead) == {"status": "healthy", "problems": []}


def test_a_base_at_its_quota_is_said_in_words():
    held = snapshot("quota", "monthly API quota exhausted")
    assert _health(held)["problems"] == ["airtable is held at its monthly quota: monthly API quota exhausted"]


def with_sendpulse(**source):
    return {**snapshot("up"), "sources": {"sendpulse": source}}


REFUSED = (
    "SendPulse refused the credentials of [sendpulse] client_id 'abc' (401: invalid_client); check client_id "
    "and client_secret (Settings > API)"
)


def test_sendpulse_misconfigured_degrades_at_once_naming_what_to_check():
    health = _health(with_sendpulse(state="misconfigured", last_error=REFUSED, failed_in_a_row=1))
    assert health["status"] == "degraded"
    [problem] = health["problems"]
    assert problem.startswith("SendPulse reconciliation misconfigured: " + REFUSED)
    assert "[sendpulse] client_id, client_secret and bot_ids" in problem and "SIGHUP" in problem
    assert "webhooks are still journaled and delivered" in problem


def test_sendpulse_down_is_a_problem_only_once_the_retry_failed_too():
    once = with_sendpulse(
        state="down",
        last_error="GET /whatsapp/bots: 503 (4 attempts)",
        failed_in_a_row=1,
        failing_since="2026-12-03T14:00:00Z",
    )
    assert _health(once) == {"status": "healthy", "problems": []}  # its window is read again whole: nothing lost yet
    lasting = with_sendpulse(**{**once["sources"]["sendpulse"], "failed_in_a_row": 2})
    [problem] = _health(lasting)["problems"]
    assert problem.startswith("SendPulse is down (2 runs in a row since 2026-12-03T14:00:00Z): GET /whatsapp/bots")
    assert "fetched back once it answers" in problem


def test_sendpulse_disabled_starting_or_up_is_no_problem():
    for source in ({"state": "disabled"}, {"state": "starting"}, {"state": "up", "last_error": REFUSED}):
        assert _health(with_sendpulse(**source)) == {"status": "healthy", "problems": []}
    assert _health(snapshot("up")) == {"status": "healthy", "problems": []}  # an older daemon's snapshot


SENDPULSE_UP = {
    "state": "up",
    "running": False,
    "last_reconciled_at": "2026-12-03T14:00:02Z",
    "seen": 7,
    "added": 2,
    "requests_total": 40,
    "last_error": "GET /whatsapp/bots: 503 (4 attempts)",
    "last_error_at": "2026-12-03T13:40:00Z",
}


def test_top_shows_the_sendpulse_line_like_a_sinks():
    view = TopView()
    view.update(with_sendpulse(**SENDPULSE_UP), now=1.0)
    later = with_sendpulse(**{**SENDPULSE_UP, "requests_total": 50, "running": True})
    lines = view.frame(later, now=3.0, width=400).splitlines()
    head = next(line for line in lines if line.startswith("source"))
    assert head.split() == ["source", "state", "reconciled", "seen", "added", "requests", "rate"]
    row = lines[lines.index(head) + 1]
    assert row.split() == ["sendpulse", "up", "2026-12-03T14:00:02Z", "7", "2", "50", "5.0/s"]
    assert lines[lines.index(head) + 2].strip() == "running now"
    assert "  2026-12-03T13:40:00Z sendpulse: GET /whatsapp/bots: 503 (4 attempts)" in lines  # recent errors


def test_top_says_sendpulse_is_disabled_or_has_not_reconciled_yet():
    disabled = TopView().frame(with_sendpulse(state="disabled"), now=1.0, width=400)
    assert "sendpulse disabled ([sendpulse] client_id empty: nothing is fetched back)" in disabled.splitlines()
    assert "reconciled" not in disabled
    starting = TopView().frame(with_sendpulse(state="starting", requests_total=1), now=1.0, width=400)
    [row] = [line for line in starting.splitlines() if line.startswith("sendpulse")]
    assert row.split() == ["sendpulse", "starting", "never", "0", "0", "1", "-"]
    assert "sendpulse" not in TopView().frame(snapshot("up"), now=1.0, width=400)  # an older daemon's snapshot
